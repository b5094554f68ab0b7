//! The task object's JSON, written directly: the bytes `serde_json` writes for a
//! [`TaskView`], at a fraction of the cost.
//!
//! A listing of 20,000 tasks is 13 MB of JSON. Through `serde_json`, three quarters of the
//! node's time for it went to serde's per-key calls and its byte-by-byte escaping loop (keys
//! included); here keys are constants and a string without anything to escape is copied
//! whole (docs/BENCHMARKS.md, "CLI calls"). The derived `Serialize` stays the definition:
//! `written_json_is_serde_json` (a property test over arbitrary task objects) holds this
//! writer to it byte for byte, so a field added to [`TaskView`] and not here fails it.

use crate::TaskId;
use crate::api::{
    CheckView, FailureView, HandoffView, HolderView, LiveTaskView, LostClaimView, ProgressView, ResultView, StaleView,
    TaskView,
};

impl TaskView {
    /// Appends this task object's JSON to `out`: exactly what `serde_json::to_writer` writes.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_json_head(out);
        TaskView::write_json_readiness(self.ready, &self.blocked_by, out);
        self.write_json_tail(out);
        out.push(b'}');
    }

    /// The task object's JSON up to its readiness: the opening brace, `id`, `title`,
    /// `description` and `status`. A task object is written in three parts, head, readiness
    /// and tail, because its readiness alone depends on other tasks (their status): a listing
    /// keeps a task's head and tail between listings and writes its readiness afresh
    /// (docs/BENCHMARKS.md, "CLI calls").
    pub fn write_json_head(&self, out: &mut Vec<u8>) {
        let mut json = Json(out);
        json.raw(b"{\"id\":");
        json.text(self.id.as_str());
        json.raw(b",\"title\":");
        json.text(&self.title);
        json.raw(b",\"description\":");
        json.text(&self.description);
        json.raw(b",\"status\":\"");
        json.raw(self.status.as_str().as_bytes());
        json.raw(b"\"");
    }

    /// The task object's `ready` and `blocked_by` members, each after a comma.
    pub fn write_json_readiness(ready: bool, blocked_by: &[TaskId], out: &mut Vec<u8>) {
        let mut json = Json(out);
        json.raw(b",\"ready\":");
        json.boolean(ready);
        json.raw(b",\"blocked_by\":");
        json.list(blocked_by, |json, id| json.text(id.as_str()));
    }

    /// The task object's members after its readiness, from `priority` to `updated_at`, each
    /// after a comma, without the closing brace ([`LiveTaskView`] adds `stale` before it).
    pub fn write_json_tail(&self, out: &mut Vec<u8>) {
        let mut json = Json(out);
        json.raw(b",\"priority\":");
        json.signed(self.priority);
        json.raw(b",\"depends_on\":");
        json.list(&self.depends_on, |json, id| json.text(id.as_str()));
        json.raw(b",\"requires\":");
        json.texts(&self.requires);
        json.raw(b",\"prefers\":");
        json.texts(&self.prefers);
        json.raw(b",\"labels\":");
        json.texts(&self.labels);
        json.raw(b",\"files\":");
        json.texts(&self.files);
        json.raw(b",\"lease_ms\":");
        json.unsigned(self.lease_ms);
        json.raw(b",\"max_attempts\":");
        json.unsigned(u64::from(self.max_attempts));
        json.raw(b",\"needs_approval\":");
        json.boolean(self.needs_approval);
        json.raw(b",\"approved\":");
        json.boolean(self.approved);
        json.raw(b",\"generation\":");
        json.unsigned(u64::from(self.generation));
        json.raw(b",\"attempts\":");
        json.unsigned(u64::from(self.attempts));
        json.raw(b",\"holder\":");
        json.option(&self.holder, holder);
        json.raw(b",\"progress\":");
        json.list(&self.progress, progress);
        json.raw(b",\"lost_claims\":");
        json.list(&self.lost_claims, lost_claim);
        json.raw(b",\"handoffs\":");
        json.list(&self.handoffs, handoff);
        json.raw(b",\"checks\":");
        json.list(&self.checks, check);
        json.raw(b",\"result\":");
        json.option(&self.result, result);
        json.raw(b",\"other_results\":");
        json.list(&self.other_results, result);
        json.raw(b",\"failure\":");
        json.option(&self.failure, failure);
        json.raw(b",\"cancelled\":");
        json.option(&self.cancelled, failure);
        json.raw(b",\"id_conflicts\":");
        json.texts(&self.id_conflicts);
        json.raw(b",\"rejected_records\":");
        json.unsigned(u64::from(self.rejected_records));
        json.raw(b",\"created_by\":");
        json.text(&self.created_by);
        json.raw(b",\"created_at\":");
        json.text(&self.created_at);
        json.raw(b",\"updated_at\":");
        json.text(&self.updated_at);
    }
}

impl LiveTaskView {
    /// Appends the JSON of the live task object of `task` and `stale` to `out`: exactly what
    /// `serde_json::to_writer` writes for a [`LiveTaskView`] holding them (the task's members,
    /// flattened, then `stale`; a listing's objects carry no `receipt`). It takes the parts so
    /// that a listing can fill one task view in place per task.
    pub fn write_json(task: &TaskView, stale: Option<&StaleView>, out: &mut Vec<u8>) {
        task.write_json_head(out);
        TaskView::write_json_readiness(task.ready, &task.blocked_by, out);
        task.write_json_tail(out);
        LiveTaskView::write_json_end(stale, out);
    }

    /// What follows a task object's tail in a live task object: `stale` and the closing brace.
    pub fn write_json_end(stale: Option<&StaleView>, out: &mut Vec<u8>) {
        let mut json = Json(out);
        json.raw(b",\"stale\":");
        match stale {
            Some(stale) => stale_view(&mut json, stale),
            None => json.raw(b"null"),
        }
        json.raw(b"}");
    }
}

fn stale_view(json: &mut Json<'_>, stale: &StaleView) {
    json.raw(b"{\"agent\":");
    json.text(&stale.agent);
    json.raw(b",\"node_id\":");
    json.text(&stale.node_id);
    json.raw(b",\"node_name\":");
    json.text(&stale.node_name);
    json.raw(b",\"claim_id\":");
    json.text(&stale.claim_id);
    json.raw(b",\"since\":");
    json.text(&stale.since);
    json.raw(b"}");
}

fn holder(json: &mut Json<'_>, holder: &HolderView) {
    json.raw(b"{\"agent\":");
    json.text(&holder.agent);
    json.raw(b",\"node_id\":");
    json.text(&holder.node_id);
    json.raw(b",\"node_name\":");
    json.text(&holder.node_name);
    json.raw(b",\"claim_id\":");
    json.text(&holder.claim_id);
    json.raw(b",\"claimed_at\":");
    json.text(&holder.claimed_at);
    json.raw(b",\"lease_until\":");
    json.text(&holder.lease_until);
    json.raw(b",\"quorum\":");
    json.boolean(holder.quorum);
    json.raw(b",\"confirmed\":");
    json.boolean(holder.confirmed);
    json.raw(b"}");
}

fn progress(json: &mut Json<'_>, progress: &ProgressView) {
    json.raw(b"{\"at\":");
    json.text(&progress.at);
    json.raw(b",\"agent\":");
    json.text(&progress.agent);
    json.raw(b",\"node_id\":");
    json.text(&progress.node_id);
    json.raw(b",\"message\":");
    json.text(&progress.message);
    json.raw(b",\"percent\":");
    json.option(&progress.percent, |json, percent| json.unsigned(u64::from(*percent)));
    json.raw(b"}");
}

fn lost_claim(json: &mut Json<'_>, lost: &LostClaimView) {
    json.raw(b"{\"agent\":");
    json.text(&lost.agent);
    json.raw(b",\"node_id\":");
    json.text(&lost.node_id);
    json.raw(b",\"claim_id\":");
    json.text(&lost.claim_id);
    json.raw(b",\"generation\":");
    json.unsigned(u64::from(lost.generation));
    json.raw(b",\"claimed_at\":");
    json.text(&lost.claimed_at);
    json.raw(b",\"reason\":");
    json.text(&lost.reason);
    json.raw(b"}");
}

fn handoff(json: &mut Json<'_>, handoff: &HandoffView) {
    json.raw(b"{\"at\":");
    json.text(&handoff.at);
    json.raw(b",\"agent\":");
    json.text(&handoff.agent);
    json.raw(b",\"node_id\":");
    json.text(&handoff.node_id);
    json.raw(b",\"commits\":");
    json.texts(&handoff.commits);
    json.raw(b",\"files\":");
    json.texts(&handoff.files);
    json.raw(b",\"tests\":");
    json.texts(&handoff.tests);
    json.raw(b",\"risks\":");
    json.texts(&handoff.risks);
    json.raw(b",\"next\":");
    json.text(&handoff.next);
    json.raw(b"}");
}

fn check(json: &mut Json<'_>, check: &CheckView) {
    json.raw(b"{\"command\":");
    json.text(&check.command);
    json.raw(b"}");
}

fn result(json: &mut Json<'_>, result: &ResultView) {
    json.raw(b"{\"summary\":");
    json.text(&result.summary);
    json.raw(b",\"by\":");
    json.text(&result.by);
    json.raw(b",\"at\":");
    json.text(&result.at);
    json.raw(b"}");
}

fn failure(json: &mut Json<'_>, failure: &FailureView) {
    json.raw(b"{\"reason\":");
    json.text(&failure.reason);
    json.raw(b",\"by\":");
    json.text(&failure.by);
    json.raw(b",\"at\":");
    json.text(&failure.at);
    json.raw(b"}");
}

/// Appends JSON tokens to a buffer, spelled as `serde_json`'s compact writer spells them.
struct Json<'a>(&'a mut Vec<u8>);

impl Json<'_> {
    fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// A JSON string: `"` and `\` escaped, the control characters as `\b \t \n \f \r` or
    /// `\u00xx` (lower-case hex), everything else, non-ASCII included, as it is.
    fn text(&mut self, text: &str) {
        let mut rest = text.as_bytes();
        self.0.reserve(rest.len() + 2);
        self.0.push(b'"');
        while let Some(at) = first_to_escape(rest) {
            self.0.extend_from_slice(&rest[..at]);
            self.escape(rest[at]);
            rest = &rest[at + 1..];
        }
        self.0.extend_from_slice(rest);
        self.0.push(b'"');
    }

    fn escape(&mut self, byte: u8) {
        match byte {
            b'"' => self.raw(b"\\\""),
            b'\\' => self.raw(b"\\\\"),
            0x08 => self.raw(b"\\b"),
            b'\t' => self.raw(b"\\t"),
            b'\n' => self.raw(b"\\n"),
            0x0c => self.raw(b"\\f"),
            b'\r' => self.raw(b"\\r"),
            control => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let escape = [b'\\', b'u', b'0', b'0', HEX[usize::from(control >> 4)], HEX[usize::from(control & 0xf)]];
                self.raw(&escape);
            }
        }
    }

    fn texts(&mut self, texts: &[String]) {
        self.list(texts, |json, text| json.text(text));
    }

    fn list<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Self, &T)) {
        self.0.push(b'[');
        for (index, value) in items.iter().enumerate() {
            if index > 0 {
                self.0.push(b',');
            }
            item(self, value);
        }
        self.0.push(b']');
    }

    fn option<T>(&mut self, value: &Option<T>, some: impl FnOnce(&mut Self, &T)) {
        match value {
            Some(value) => some(self, value),
            None => self.raw(b"null"),
        }
    }

    fn boolean(&mut self, value: bool) {
        self.raw(if value { b"true" } else { b"false" });
    }

    fn unsigned(&mut self, mut value: u64) {
        if value < 10 {
            // Most numbers of a task object are single digits: attempts, generation, flags.
            self.0.push(b'0' + value as u8);
            return;
        }
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.raw(&digits[start..]);
    }

    fn signed(&mut self, value: i64) {
        if value < 0 {
            self.0.push(b'-');
        }
        self.unsigned(value.unsigned_abs());
    }
}

/// Whether JSON escapes `byte` in a string.
fn is_escaped(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Where the first byte JSON escapes is, looking at eight bytes at a time: most strings (ids,
/// titles, times, node ids) have none, and a byte-by-byte look was the writer's main cost.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(8);
    for (index, chunk) in chunks.by_ref().enumerate() {
        // A chunk is always eight bytes; a zero word would only send it to the exact look.
        let word = chunk.try_into().map_or(0, u64::from_le_bytes);
        if may_need_escape(word)
            && let Some(at) = chunk.iter().position(|&byte| is_escaped(byte))
        {
            return Some(index * 8 + at);
        }
    }
    let remainder = chunks.remainder();
    let at = remainder.iter().position(|&byte| is_escaped(byte))?;
    Some(bytes.len() - remainder.len() + at)
}

/// Whether any of the eight bytes of `word` is below 0x20, `"` or `\`, by the bit tricks of
/// "Bit Twiddling Hacks" (`hasless`, `haszero`): exact for "any", which is all this needs.
fn may_need_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero_byte = |value: u64| value.wrapping_sub(ONES) & !value & HIGHS != 0;
    let has_control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
    has_control || has_zero_byte(word ^ (ONES * u64::from(b'"'))) || has_zero_byte(word ^ (ONES * u64::from(b'\\')))
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::api::TaskStatus;
    use crate::task_id::TaskId;

    /// Any text, weighted towards what needs escaping: quotes, backslashes, controls, DEL,
    /// and characters of two, three and four bytes.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[a-z \"\\\\\u{0}-\u{1f}\u{7f}é€😀]{0,12}", Just(String::new()),]
    }

    fn texts() -> impl Strategy<Value = Vec<String>> {
        vec(text(), 0..3)
    }

    fn task_ids() -> impl Strategy<Value = Vec<TaskId>> {
        vec("[A-Za-z0-9][A-Za-z0-9._-]{0,15}", 0..3)
            .prop_map(|ids| ids.iter().filter_map(|id| TaskId::new(id).ok()).collect())
    }

    fn holder() -> impl Strategy<Value = HolderView> {
        (text(), text(), text(), text(), text(), text(), any::<bool>(), any::<bool>()).prop_map(
            |(agent, node_id, node_name, claim_id, claimed_at, lease_until, quorum, confirmed)| HolderView {
                agent,
                node_id,
                node_name,
                claim_id,
                claimed_at,
                lease_until,
                quorum,
                confirmed,
            },
        )
    }

    fn progress() -> impl Strategy<Value = ProgressView> {
        (text(), text(), text(), text(), any::<Option<u8>>())
            .prop_map(|(at, agent, node_id, message, percent)| ProgressView { at, agent, node_id, message, percent })
    }

    fn lost_claim() -> impl Strategy<Value = LostClaimView> {
        (text(), text(), text(), any::<u32>(), text(), text()).prop_map(
            |(agent, node_id, claim_id, generation, claimed_at, reason)| LostClaimView {
                agent,
                node_id,
                claim_id,
                generation,
                claimed_at,
                reason,
            },
        )
    }

    fn handoff() -> impl Strategy<Value = HandoffView> {
        (text(), text(), text(), texts(), texts(), texts(), texts(), text()).prop_map(
            |(at, agent, node_id, commits, files, tests, risks, next)| HandoffView {
                at,
                agent,
                node_id,
                commits,
                files,
                tests,
                risks,
                next,
            },
        )
    }

    fn stale() -> impl Strategy<Value = StaleView> {
        (text(), text(), text(), text(), text()).prop_map(|(agent, node_id, node_name, claim_id, since)| StaleView {
            agent,
            node_id,
            node_name,
            claim_id,
            since,
        })
    }

    fn result() -> impl Strategy<Value = ResultView> {
        (text(), text(), text()).prop_map(|(summary, by, at)| ResultView { summary, by, at })
    }

    fn failure() -> impl Strategy<Value = FailureView> {
        (text(), text(), text()).prop_map(|(reason, by, at)| FailureView { reason, by, at })
    }

    fn status() -> impl Strategy<Value = TaskStatus> {
        proptest::sample::select(TaskStatus::ALL.to_vec())
    }

    /// Every field of the task object, each drawn on its own.
    fn task_view() -> impl Strategy<Value = TaskView> {
        let head =
            ("[A-Za-z0-9][A-Za-z0-9._-]{0,15}", text(), text(), status(), any::<bool>(), task_ids(), any::<i64>());
        let lists = (task_ids(), texts(), texts(), texts(), texts());
        let numbers = (any::<u64>(), any::<u32>(), any::<bool>(), any::<bool>(), any::<u32>(), any::<u32>());
        let records = (
            proptest::option::of(holder()),
            vec(progress(), 0..3),
            vec(lost_claim(), 0..2),
            vec(handoff(), 0..2),
            vec(text().prop_map(|command| CheckView { command }), 0..2),
        );
        let outcomes = (
            proptest::option::of(result()),
            vec(result(), 0..2),
            proptest::option::of(failure()),
            proptest::option::of(failure()),
        );
        let tail = (texts(), any::<u32>(), text(), text(), text());
        (head, lists, numbers, records, outcomes, tail).prop_filter_map(
            "a valid task id",
            |(head, lists, numbers, records, outcomes, tail)| {
                let (id, title, description, status, ready, blocked_by, priority) = head;
                let (depends_on, requires, prefers, labels, files) = lists;
                let (lease_ms, max_attempts, needs_approval, approved, generation, attempts) = numbers;
                let (holder, progress, lost_claims, handoffs, checks) = records;
                let (result, other_results, failure, cancelled) = outcomes;
                let (id_conflicts, rejected_records, created_by, created_at, updated_at) = tail;
                Some(TaskView {
                    id: TaskId::new(&id).ok()?,
                    title,
                    description,
                    status,
                    ready,
                    blocked_by,
                    priority,
                    depends_on,
                    requires,
                    prefers,
                    labels,
                    files,
                    lease_ms,
                    max_attempts,
                    needs_approval,
                    approved,
                    generation,
                    attempts,
                    holder,
                    progress,
                    lost_claims,
                    handoffs,
                    checks,
                    result,
                    other_results,
                    failure,
                    cancelled,
                    id_conflicts,
                    rejected_records,
                    created_by,
                    created_at,
                    updated_at,
                })
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Goal: the eight-bytes-at-a-time look finds the byte a plain look finds.
        #[test]
        fn the_first_byte_to_escape_is_found_by_words_as_by_bytes(
            bytes in vec(prop_oneof![12 => 0x20u8..=0xff, 1 => any::<u8>()], 0..40)
        ) {
            prop_assert_eq!(first_to_escape(&bytes), bytes.iter().position(|&byte| is_escaped(byte)));
        }

        /// Goal: the written JSON is byte for byte serde_json's, for any task object.
        #[test]
        fn written_json_is_serde_json(view in task_view()) {
            let mut written = Vec::new();
            view.write_json(&mut written);
            let expected = serde_json::to_vec(&view).map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(String::from_utf8_lossy(&written), String::from_utf8_lossy(&expected));
        }

        /// Goal: the live task object's written JSON is byte for byte serde_json's too.
        #[test]
        fn written_live_json_is_serde_json(view in task_view(), stale in proptest::option::of(stale())) {
            let mut written = Vec::new();
            LiveTaskView::write_json(&view, stale.as_ref(), &mut written);
            let live = LiveTaskView { task: view, stale, receipt: None };
            let expected = serde_json::to_vec(&live).map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(String::from_utf8_lossy(&written), String::from_utf8_lossy(&expected));
        }
    }

    /// Every control character, the quote and the backslash escape as serde_json escapes them.
    #[test]
    fn every_escape_is_serde_json_s() {
        let all: String = (0u8..0x80).map(char::from).chain(['é', '€', '😀']).collect();
        let mut written = Vec::new();
        Json(&mut written).text(&all);
        assert_eq!(Ok(written), serde_json::to_vec(&all).map_err(|error| error.to_string()));
        let mut numbers = Vec::new();
        let mut json = Json(&mut numbers);
        for value in [0, 7, -1, i64::MIN, i64::MAX] {
            json.signed(value);
            json.raw(b" ");
        }
        json.unsigned(u64::MAX);
        assert_eq!(String::from_utf8_lossy(&numbers), format!("0 7 -1 {} {} {}", i64::MIN, i64::MAX, u64::MAX));
    }
}
