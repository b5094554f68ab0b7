//! What the CLI prints: renderings for people (pure functions from the API's JSON types to
//! text) and the writers that put text, JSON and export bytes on stdout.

use std::collections::BTreeMap;
use std::io::Write;

use meshwork_crdt::export::MemberView;
use meshwork_protocol::api::{
    Confirmation, HandoffView, InitView, LiveTaskView, LostClaimView, NodeStatus, PeerView, ProgressView, Receipt,
    TaskPage, TaskStatus, TaskView,
};
use meshwork_protocol::error::ErrorEnvelope;
use meshwork_protocol::event::{Event, EventEnvelope};
use meshwork_protocol::{ErrorBody, ErrorCode, Probe};

/// Longest title a task table shows, in characters; longer ones end in `…`.
const TABLE_TITLE_CHARS_MAX: usize = 60;

/// Writes `text` to stdout. A closed pipe (`meshwork task list | head -1`) is not a failure.
pub(crate) fn print_text(text: &str) -> Result<(), ErrorBody> {
    write_stdout(text.as_bytes())
}

/// Writes JSON text already checked to be one document, ending it with a newline.
pub(crate) fn print_json_text(json: &[u8]) -> Result<(), ErrorBody> {
    write_stdout(json.trim_ascii())?;
    write_stdout(b"\n")
}

/// Writes a JSON document that came in pieces (a long listing), ending it with a newline.
/// Straight to the file descriptor: stdout's line buffer would first scan all of the
/// megabytes for a newline.
pub(crate) fn print_json_chunks(chunks: &[impl AsRef<[u8]>]) -> Result<(), ErrorBody> {
    use std::os::fd::AsFd;
    let cannot =
        |error: std::io::Error| ErrorBody::new(ErrorCode::Internal, format!("cannot write to stdout: {error}"));
    std::io::stdout().flush().map_err(cannot)?;
    let mut stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned().map_err(cannot)?);
    let mut pieces = trimmed(chunks);
    pieces.push(b"\n");
    for piece in pieces {
        match stdout.write_all(piece) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(error) => return Err(cannot(error)),
        }
    }
    Ok(())
}

/// The pieces of a text without the whitespace before its first and after its last
/// non-whitespace byte.
fn trimmed(chunks: &[impl AsRef<[u8]>]) -> Vec<&[u8]> {
    let mut pieces: Vec<&[u8]> = chunks.iter().map(AsRef::as_ref).collect();
    while pieces.first().is_some_and(|piece| piece.trim_ascii_start().is_empty()) {
        pieces.remove(0);
    }
    while pieces.last().is_some_and(|piece| piece.trim_ascii_end().is_empty()) {
        pieces.pop();
    }
    if let Some(first) = pieces.first_mut() {
        *first = first.trim_ascii_start();
    }
    if let Some(last) = pieces.last_mut() {
        *last = last.trim_ascii_end();
    }
    pieces
}

/// Writes `{"error": {...}}` on stdout, the `--json` shape of every failure.
pub(crate) fn print_json_error(error: &ErrorBody) {
    let envelope = ErrorEnvelope { error: error.clone() };
    let text = serde_json::to_string(&envelope).unwrap_or_else(|_| {
        // An ErrorBody always encodes; this keeps the promise of one JSON document anyway.
        r#"{"error":{"code":"INTERNAL","message":"cannot encode the error","retryable":false}}"#.to_owned()
    });
    // Nothing is left to report a failed write to.
    let _ = print_text(&(text + "\n"));
}

/// Writes an export's bytes as they came; text exports end with a newline.
pub(crate) fn print_export(bytes: &[u8], is_text: bool) -> Result<(), ErrorBody> {
    write_stdout(bytes)?;
    if is_text && !bytes.is_empty() && !bytes.ends_with(b"\n") {
        write_stdout(b"\n")?;
    }
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> Result<(), ErrorBody> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(ErrorBody::new(ErrorCode::Internal, format!("cannot write to stdout: {error}"))),
    }
}

/// Which command a task answer came from, which picks its one-line confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskAction {
    /// `task show`: the whole task, not a confirmation.
    Show,
    Added,
    Edited,
    Cancelled,
    Claimed,
    Renewed,
    Released,
    Progress,
    Handoff,
    Done,
    Failed,
    Approved,
}

/// The human answer to a command that returned a task.
pub(crate) fn task(action: TaskAction, live: &LiveTaskView) -> String {
    let task = &live.task;
    let id = &task.id;
    let line = match action {
        TaskAction::Show => return task_block(live),
        TaskAction::Added if task.blocked_by.is_empty() => format!("added {id}"),
        TaskAction::Added => format!("added {id} (blocked by {})", join(&task.blocked_by)),
        TaskAction::Edited => format!("edited {id}"),
        TaskAction::Cancelled => format!("cancelled {id}"),
        TaskAction::Claimed => {
            let claimed = match &task.holder {
                Some(holder) => {
                    format!("claimed {id} (generation {}, lease until {})", task.generation, holder.lease_until)
                }
                None => format!("claimed {id} (generation {})", task.generation),
            };
            match &live.receipt {
                Some(receipt) => format!("{claimed}\n{}", receipt_line(receipt)),
                None => claimed,
            }
        }
        TaskAction::Renewed => match &task.holder {
            Some(holder) => format!("renewed {id} (lease until {})", holder.lease_until),
            None => format!("renewed {id}"),
        },
        TaskAction::Released => format!("released {id}"),
        TaskAction::Progress => match task.progress.last().and_then(|progress| progress.percent) {
            Some(percent) => format!("recorded progress on {id} ({percent}%)"),
            None => format!("recorded progress on {id}"),
        },
        TaskAction::Handoff => format!("recorded a handoff on {id}"),
        TaskAction::Done => format!("done {id}"),
        TaskAction::Failed if task.status == TaskStatus::Failed => {
            format!("{id} failed for good after {} attempts", task.attempts)
        }
        TaskAction::Failed => format!(
            "recorded the failure of {id}; it is open again (attempt {} of at most {})",
            task.attempts, task.max_attempts
        ),
        TaskAction::Approved => format!("approved {id}"),
    };
    line + "\n"
}

/// What a claim's receipt promises, in one line (docs/PROTOCOL.md, "Confirmation and
/// receipts").
fn receipt_line(receipt: &Receipt) -> String {
    let votes = format!("{} of {} votes", receipt.acknowledged_by.len(), receipt.needed);
    match receipt.confirmation {
        Confirmation::Quorum => format!("confirmed by a quorum ({votes}): no other claim can win it"),
        Confirmation::Settled => {
            format!("settled, not confirmed yet ({votes}): it may still lose when the mesh merges; you will be told")
        }
        Confirmation::Offline => {
            "offline: no peer was reachable; it may still lose when this node meets the mesh; you will be told"
                .to_owned()
        }
    }
}

/// Everything about one task, for `task show`.
pub(crate) fn task_block(live: &LiveTaskView) -> String {
    let task = &live.task;
    let mut fields = Fields::default();
    fields.add("status", status_summary(task));
    if let Some(holder) = &task.holder {
        let who = format!("{}@{}", holder.agent, holder.node_name);
        let confirmed = if holder.confirmed { "confirmed by a quorum" } else { "not confirmed by a quorum" };
        let since = format!("{who} since {}, lease until {}, {confirmed}", holder.claimed_at, holder.lease_until);
        fields.add("holder", since);
    }
    if let Some(stale) = &live.stale {
        fields.add("stale", format!("the lease ran out at {}; any agent may take the task over", stale.since));
    }
    fields.add("priority", task.priority.to_string());
    fields
        .add("attempts", format!("{} of at most {}, generation {}", task.attempts, task.max_attempts, task.generation));
    fields.add("lease", format_duration_ms(task.lease_ms));
    fields.add_list("depends on", &task.depends_on);
    fields.add_list("blocked by", &task.blocked_by);
    fields.add_list("requires", &task.requires);
    fields.add_list("prefers", &task.prefers);
    fields.add_list("labels", &task.labels);
    fields.add_list("files", &task.files);
    let checks: Vec<&str> = task.checks.iter().map(|check| check.command.as_str()).collect();
    fields.add_list("checks", &checks);
    if task.needs_approval {
        fields.add("approval", if task.approved { "given" } else { "needed" }.to_owned());
    }
    add_outcomes(&mut fields, task);
    fields.add_list("id conflicts", &task.id_conflicts);
    if task.rejected_records > 0 {
        fields.add("rejected records", task.rejected_records.to_string());
    }
    fields.add("created", format!("{} by {}", task.created_at, task.created_by));
    fields.add("updated", task.updated_at.clone());
    let mut out = format!("{}  {}\n{}", task.id, task.title, fields.render());
    out.push_str(&task_sections(task));
    out
}

fn status_summary(task: &TaskView) -> String {
    let status = task.status.as_str();
    match task.status {
        TaskStatus::Open if task.ready => format!("{status}, ready"),
        TaskStatus::Open => format!("{status}, not ready"),
        _ => status.to_owned(),
    }
}

fn add_outcomes(fields: &mut Fields, task: &TaskView) {
    if let Some(result) = &task.result {
        fields.add("result", format!("{} (by {} at {})", result.summary, result.by, result.at));
    }
    for other in &task.other_results {
        fields.add("other result", format!("{} (by {} at {})", other.summary, other.by, other.at));
    }
    if let Some(failure) = &task.failure {
        fields.add("failed", format!("{} (by {} at {})", failure.reason, failure.by, failure.at));
    }
    if let Some(cancelled) = &task.cancelled {
        fields.add("cancelled", format!("{} (by {} at {})", cancelled.reason, cancelled.by, cancelled.at));
    }
}

/// The multi-line parts of a task: description, progress, lost claims, handoffs.
fn task_sections(task: &TaskView) -> String {
    let mut out = String::new();
    if !task.description.is_empty() {
        out.push_str("description:\n");
        out.push_str(&indent(&task.description, "  "));
    }
    if !task.progress.is_empty() {
        out.push_str("progress:\n");
        out.push_str(&indent(&table(&[], &task.progress.iter().map(progress_row).collect::<Vec<_>>()), "  "));
    }
    if !task.lost_claims.is_empty() {
        out.push_str("lost claims:\n");
        for lost in &task.lost_claims {
            out.push_str(&format!("  {}\n", lost_claim_line(lost)));
        }
    }
    if !task.handoffs.is_empty() {
        out.push_str("handoffs:\n");
        for handoff in &task.handoffs {
            out.push_str(&indent(&handoff_block(handoff), "  "));
        }
    }
    out
}

fn progress_row(progress: &ProgressView) -> Vec<String> {
    let percent = progress.percent.map(|percent| format!("{percent}%")).unwrap_or_default();
    let who = format!("{}@{}", progress.agent, short_node_id(&progress.node_id));
    vec![progress.at.clone(), who, percent, progress.message.clone()]
}

fn lost_claim_line(lost: &LostClaimView) -> String {
    format!(
        "{}@{} (generation {}, claimed {}): {}",
        lost.agent,
        short_node_id(&lost.node_id),
        lost.generation,
        lost.claimed_at,
        lost.reason
    )
}

fn handoff_block(handoff: &HandoffView) -> String {
    let mut fields = Fields::default();
    fields.add_list("commits", &handoff.commits);
    fields.add_list("files", &handoff.files);
    fields.add_list("tests", &handoff.tests);
    fields.add_list("risks", &handoff.risks);
    if !handoff.next.is_empty() {
        fields.add("next", handoff.next.clone());
    }
    let who = format!("{}@{}", handoff.agent, short_node_id(&handoff.node_id));
    format!("{} by {who}\n{}", handoff.at, indent(&fields.render(), "  "))
}

/// `task list` and `ready`: one aligned row per task.
pub(crate) fn task_table(tasks: &[LiveTaskView]) -> String {
    if tasks.is_empty() {
        return "no tasks\n".to_owned();
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|live| {
            let task = &live.task;
            let holder = task.holder.as_ref().map(|holder| format!("{}@{}", holder.agent, holder.node_name));
            // A stale task is claimed on record, but offered for takeover.
            let status = if live.stale.is_some() { "stale" } else { task.status.as_str() };
            vec![
                task.id.to_string(),
                status.to_owned(),
                task.priority.to_string(),
                holder.unwrap_or_else(|| "-".to_owned()),
                truncate(&task.title, TABLE_TITLE_CHARS_MAX),
            ]
        })
        .collect();
    table(&["ID", "STATUS", "PRI", "HOLDER", "TITLE"], &rows)
}

/// `ready` and `task list` for people: the first rows, then how many more the listing holds
/// and how to see them.
pub(crate) fn task_page(page: &TaskPage) -> String {
    let mut out = task_table(&page.tasks);
    let rest = page.total.saturating_sub(page.tasks.len());
    if rest > 0 {
        out.push_str(&format!("… and {} more (--limit N shows N rows, --limit 0 all)\n", thousands(rest)));
    }
    out
}

/// A count with commas between thousands: `20,000`.
pub(crate) fn thousands(number: usize) -> String {
    let digits = number.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Whether a text in pieces looks like one JSON object or array: a first `{` or `[` and the
/// matching last byte, around any whitespace. A cheap check on what the node's JSON encoder
/// wrote, not a parse.
pub(crate) fn looks_like_one_json_document(chunks: &[impl AsRef<[u8]>]) -> bool {
    let pieces = trimmed(chunks);
    let first = pieces.first().and_then(|piece| piece.first());
    let last = pieces.last().and_then(|piece| piece.last());
    matches!((first, last), (Some(b'{'), Some(b'}')) | (Some(b'['), Some(b']')))
}

/// `node status`: the node, then its peers.
pub(crate) fn node_status(status: &NodeStatus) -> String {
    let mut fields = Fields::default();
    fields.add("node", format!("{} ({})", status.name, status.node_id));
    fields.add("mesh", status.mesh_id.clone());
    fields.add("home", status.home.clone());
    fields.add("pid", format!("{}, started {}", status.pid, status.started_at));
    fields.add("api version", status.api_version.to_string());
    if status.offline {
        fields.add("network", "offline: neither listening nor dialling".to_owned());
    }
    fields.add_lines("listening on", &status.listen);
    fields.add("tasks", status.tasks.to_string());
    fields.add("rejected records", status.rejected_records.to_string());
    fields.add_lines("skipped files", &status.skipped_files);
    let mut out = fields.render();
    if status.peers.is_empty() {
        out.push_str("peers: none\n");
    } else {
        let rows: Vec<Vec<String>> = status.peers.iter().map(peer_row).collect();
        out.push_str("peers:\n");
        out.push_str(&indent(&table(&["NAME", "NODE ID", "STATE", "ADDRESSES"], &rows), "  "));
    }
    out
}

fn peer_row(peer: &PeerView) -> Vec<String> {
    let mut state = match (&peer.connected, &peer.last_seen, peer.rtt_ms) {
        (true, _, Some(rtt)) => format!("connected, {rtt:.1} ms"),
        (true, _, None) => "connected".to_owned(),
        (false, Some(seen), _) => format!("last seen {seen}"),
        (false, None, _) => "never seen".to_owned(),
    };
    if peer.bad_frames > 0 {
        state.push_str(&format!(", {} bad frames", peer.bad_frames));
    }
    vec![peer.name.clone(), peer.node_id.clone(), state, peer.addrs.join(", ")]
}

/// `mesh invite`: the token alone on its line, so it is easy to copy.
pub(crate) fn invite(invite: &meshwork_protocol::api::InviteView) -> String {
    format!(
        "{}\n\nOn the other machine, with its node running: meshwork mesh join TOKEN\n\
         The token works once, until {}.\n",
        invite.token, invite.expires_at
    )
}

/// `mesh join`.
pub(crate) fn joined(joined: &meshwork_protocol::api::JoinedView) -> String {
    format!(
        "joined mesh {} through {}: {} members, {} tasks\n",
        joined.mesh_id, joined.inviter, joined.members, joined.tasks
    )
}

/// `inbox read`: one block per message, oldest first.
pub(crate) fn messages(messages: &[meshwork_protocol::api::MessageView]) -> String {
    if messages.is_empty() {
        return "no messages\n".to_owned();
    }
    let mut out = String::new();
    for message in messages {
        let new = if message.read { "" } else { " (new)" };
        out.push_str(&format!(
            "{} {} from {} [{}]{new}\n  {}\n  {}\n",
            message.at, message.id, message.from, message.priority, message.subject, message.body
        ));
    }
    out
}

/// `mesh members`: one row per member.
pub(crate) fn members_table(members: &[MemberView]) -> String {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|member| {
            let added_by = if member.added_by.is_empty() { "-" } else { &member.added_by };
            vec![member.name.clone(), member.node_id.clone(), added_by.to_owned(), member.added_at.clone()]
        })
        .collect();
    table(&["NAME", "NODE ID", "ADDED BY", "ADDED AT"], &rows)
}

/// `init`: the home and who the node is.
pub(crate) fn init(view: &InitView) -> String {
    let mut fields = Fields::default();
    fields.add("home", view.home.clone());
    fields.add("node", format!("{} ({})", view.name, view.node_id));
    fields.add("mesh", view.mesh_id.clone());
    fields.render()
}

/// `key: value` lines with the values aligned; empty lists are left out.
#[derive(Debug, Default)]
struct Fields {
    lines: Vec<(&'static str, String)>,
}

impl Fields {
    fn add(&mut self, key: &'static str, value: String) {
        self.lines.push((key, value));
    }

    /// A list on one line, comma-separated; nothing when it is empty.
    fn add_list(&mut self, key: &'static str, values: &[impl std::fmt::Display]) {
        if !values.is_empty() {
            self.add(key, join(values));
        }
    }

    /// A list with one value per line under each other; nothing when it is empty.
    fn add_lines(&mut self, key: &'static str, values: &[String]) {
        for (index, value) in values.iter().enumerate() {
            self.add(if index == 0 { key } else { "" }, value.clone());
        }
    }

    fn render(&self) -> String {
        let width = self.lines.iter().map(|(key, _)| key.len() + 1).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value) in &self.lines {
            let label = if key.is_empty() { String::new() } else { format!("{key}:") };
            out.push_str(&format!("{label:width$}  {value}\n"));
        }
        out
    }
}

/// Rows in aligned columns two spaces apart, with a header row when `headers` is not empty.
/// The last column is not padded, so no line ends in spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let header_row: Vec<String> = headers.iter().map(|header| (*header).to_owned()).collect();
    let all_rows: Vec<&Vec<String>> = std::iter::once(&header_row).filter(|row| !row.is_empty()).chain(rows).collect();
    let columns = all_rows.iter().map(|row| row.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            let cell_widths = all_rows.iter().filter_map(|row| row.get(column));
            cell_widths.map(|cell| cell.chars().count()).max().unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in all_rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 < row.len() {
                let pad = widths[column] - cell.chars().count();
                line.push_str(&format!("{cell}{:pad$}  ", ""));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `a, b, c`.
fn join(values: &[impl std::fmt::Display]) -> String {
    let texts: Vec<String> = values.iter().map(ToString::to_string).collect();
    texts.join(", ")
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|line| format!("{prefix}{line}\n")).collect()
}

/// `text` cut to `chars_max` characters, the last one `…` when something was cut.
fn truncate(text: &str, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(chars_max.saturating_sub(1)).collect();
    kept + "…"
}

/// The tail of a node id (`…Ab3dEf9q`): every ed25519 PeerId begins `12D3KooW`, so the end
/// tells them apart.
/// One event for people: its time of day, kind, and what it is about.
pub(crate) fn event(envelope: &EventEnvelope) -> String {
    let time = envelope.at.get(11..23).unwrap_or(&envelope.at);
    let who = |agent: &Option<String>, node_id: &str| match agent {
        Some(agent) => format!("{agent}@{}", short_node_id(node_id)),
        None => short_node_id(node_id),
    };
    let about = match &envelope.event {
        Event::TaskCreated { task, title } => format!("{task} {title:?}"),
        Event::TaskChanged { task, status } => format!("{task} ({})", status.as_str()),
        Event::TaskReady { task } => task.clone(),
        Event::TaskClaimed { task, agent, node_id, .. } => format!("{task} by {}", who(agent, node_id)),
        Event::TaskFinished { task, status } => format!("{task} {}", status.as_str()),
        Event::ClaimWon { task, agent, node_id, .. } => format!("{task} {} holds it after all", who(agent, node_id)),
        Event::ClaimConfirmed { task, agent, node_id, .. } => {
            format!("{task} {}: confirmed by a quorum, no other claim can win it", who(agent, node_id))
        }
        Event::ClaimLost { task, agent, node_id, reason, .. } => format!("{task} {}: {reason}", who(agent, node_id)),
        Event::ClaimTakenOver { task, agent, node_id, .. } => format!("{task} from {}", who(agent, node_id)),
        Event::LeaseExpiring { task, agent, node_id, lease_until } => {
            format!("{task} {} until {lease_until}; renew it", who(agent, node_id))
        }
        Event::LeaseExpired { task, agent, node_id, since } => {
            format!("{task} {} since {since}; the task is stale", who(agent, node_id))
        }
        Event::MessageArrived { agent, from, subject, priority, .. } => {
            format!("to {agent} from {from} ({priority}): {subject}")
        }
        Event::PeerConnected { node_id }
        | Event::PeerDisconnected { node_id }
        | Event::MemberRemoved { node_id }
        | Event::ProbeChanged { node_id } => short_node_id(node_id),
        Event::MemberAdded { node_id, name } => format!("{name} ({})", short_node_id(node_id)),
        Event::Gap { after, before } => {
            format!("events after {after} and before {before} are gone; read the state afresh")
        }
    };
    format!("{time} {} {about}\n", envelope.event.kind())
}

fn short_node_id(node_id: &str) -> String {
    const TAIL_CHARS: usize = 8;
    let count = node_id.chars().count();
    if count <= TAIL_CHARS * 2 {
        return node_id.to_owned();
    }
    let tail: String = node_id.chars().skip(count - TAIL_CHARS).collect();
    format!("…{tail}")
}

/// Milliseconds in the largest unit that divides them (`30m`, `90s`, `1d`), as users write
/// durations.
fn format_duration_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s")];
    UNITS
        .iter()
        .find(|(unit_ms, _)| ms >= *unit_ms && ms.is_multiple_of(*unit_ms))
        .map(|(unit_ms, unit)| format!("{}{unit}", ms / unit_ms))
        .unwrap_or_else(|| format!("{ms}ms"))
}

const BYTES_PER_GIB: u64 = 1024 * 1024 * 1024;

/// Renders a probe for `meshwork caps`: one aligned `key: value` line per field, memory and
/// disk in GiB, one line per GPU, per tool (`name version`) and per label.
pub(crate) fn probe(probe: &Probe) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("os", or_unknown(&probe.os)),
        ("os version", or_unknown(&probe.os_version)),
        ("kernel", or_unknown(&probe.kernel)),
        ("arch", or_unknown(&probe.arch)),
        ("hostname", or_unknown(&probe.hostname)),
        ("cpu", or_unknown(&probe.cpu_model)),
        ("cpus", probe.cpus.to_string()),
        ("memory", gib(probe.memory_bytes)),
        ("disk free", gib(probe.disk_free_bytes)),
    ];
    let gpus = probe.gpus.iter().map(|gpu| format!("{} ({})", gpu.model, gib(gpu.memory_bytes)));
    push_list(&mut rows, "gpus", gpus.collect());
    push_list(&mut rows, "tools", tool_lines(&probe.tools));
    push_list(&mut rows, "labels", probe.labels.clone());
    let key_width = rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 1;
    let mut text = String::new();
    for (key, value) in rows {
        let key = if key.is_empty() { String::new() } else { format!("{key}:") };
        text.push_str(format!("{key:<key_width$} {value}").trim_end());
        text.push('\n');
    }
    text
}

/// Adds `values` under `key`: the first on the key's row, the rest on rows of their own
/// (an empty key), or `none`.
fn push_list<'a>(rows: &mut Vec<(&'a str, String)>, key: &'a str, values: Vec<String>) {
    if values.is_empty() {
        rows.push((key, "none".to_owned()));
    }
    for (index, value) in values.into_iter().enumerate() {
        rows.push((if index == 0 { key } else { "" }, value));
    }
}

/// `name version` per tool, the names padded so the versions line up.
fn tool_lines(tools: &BTreeMap<String, String>) -> Vec<String> {
    let name_width = tools.keys().map(String::len).max().unwrap_or(0);
    let lines = tools.iter().map(|(name, version)| format!("{name:<name_width$} {version}"));
    lines.map(|line| line.trim_end().to_owned()).collect()
}

fn or_unknown(text: &str) -> String {
    if text.is_empty() { "unknown".to_owned() } else { text.to_owned() }
}

// The cast loses precision only past 2^53 bytes, far below what one decimal shows.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / BYTES_PER_GIB as f64)
}

#[cfg(test)]
mod tests {
    use meshwork_protocol::api::{HolderView, ResultView, StaleView};

    use super::*;

    const NODE_A: &str = "12D3KooWQyZJx1cHRy9bUW2fVwrEpXR5UKpXBv6Nq3aBcDeFgHiJ";

    fn sample_task(id: &str, title: &str) -> TaskView {
        let id = meshwork_protocol::TaskId::new(id).unwrap_or_else(|_| panic!("bad id {id}"));
        TaskView {
            title: title.to_owned(),
            ready: true,
            lease_ms: 1_800_000,
            max_attempts: 3,
            created_by: "ann@laptop".to_owned(),
            created_at: "2026-11-21T06:00:00.000Z".to_owned(),
            updated_at: "2026-11-21T06:10:00.000Z".to_owned(),
            ..TaskView::blank(id)
        }
    }

    fn claimed(mut task: TaskView) -> TaskView {
        task.status = TaskStatus::Claimed;
        task.ready = false;
        task.generation = 1;
        task.attempts = 1;
        task.holder = Some(HolderView {
            agent: "claude-1".to_owned(),
            node_id: NODE_A.to_owned(),
            node_name: "laptop".to_owned(),
            claim_id: "c1".to_owned(),
            claimed_at: "2026-11-21T06:05:00.000Z".to_owned(),
            lease_until: "2026-11-21T06:35:00.000Z".to_owned(),
            quorum: true,
            confirmed: true,
        });
        task
    }

    /// A task as a node answers it, with no stale holder.
    fn live(task: TaskView) -> LiveTaskView {
        LiveTaskView { task, stale: None, receipt: None }
    }

    /// The task table aligns its columns, shows holders as agent@node and cuts long titles.
    #[test]
    fn task_table_aligns_columns_and_truncates_titles() {
        let mut urgent = claimed(sample_task("WRK-12", "Fix the flaky sync test"));
        urgent.priority = -5;
        let long_title = "Port the resolver to the new record format and keep every old document loading";
        let stale = StaleView {
            agent: "claude-1".to_owned(),
            node_id: NODE_A.to_owned(),
            node_name: "laptop".to_owned(),
            claim_id: "c1".to_owned(),
            since: "2026-11-21T06:35:00.000Z".to_owned(),
        };
        let stale_task =
            LiveTaskView { task: claimed(sample_task("WRK-13", "Abandoned work")), stale: Some(stale), receipt: None };
        let tasks = [
            live(sample_task("WRK-1", "Write docs")),
            live(urgent),
            stale_task,
            live(sample_task("mw-0123456789", long_title)),
        ];
        expect_test::expect![[r#"
            ID             STATUS   PRI  HOLDER           TITLE
            WRK-1          open     0    -                Write docs
            WRK-12         claimed  -5   claude-1@laptop  Fix the flaky sync test
            WRK-13         stale    0    claude-1@laptop  Abandoned work
            mw-0123456789  open     0    -                Port the resolver to the new record format and keep every o…
        "#]]
        .assert_eq(&task_table(&tasks));
        expect_test::expect!["no tasks\n"].assert_eq(&task_table(&[]));
    }

    /// A page of a long listing shows its rows, then how many more there are and how to see
    /// them; a complete page shows no such line.
    #[test]
    fn task_page_counts_the_rows_it_leaves_out() {
        let tasks =
            vec![live(sample_task("WRK-1", "Write docs")), live(claimed(sample_task("WRK-2", "Fix the build")))];
        let cut = TaskPage { total: 5_002, tasks: tasks.clone() };
        expect_test::expect![[r#"
            ID     STATUS   PRI  HOLDER           TITLE
            WRK-1  open     0    -                Write docs
            WRK-2  claimed  0    claude-1@laptop  Fix the build
            … and 5,000 more (--limit N shows N rows, --limit 0 all)
        "#]]
        .assert_eq(&task_page(&cut));
        let whole = TaskPage { total: 2, tasks };
        expect_test::expect![[r#"
            ID     STATUS   PRI  HOLDER           TITLE
            WRK-1  open     0    -                Write docs
            WRK-2  claimed  0    claude-1@laptop  Fix the build
        "#]]
        .assert_eq(&task_page(&whole));
        expect_test::expect!["no tasks\n"].assert_eq(&task_page(&TaskPage { total: 0, tasks: Vec::new() }));
    }

    /// Counts are grouped by thousands.
    #[test]
    fn thousands_are_separated_by_commas() {
        let shown = [0, 7, 999, 1_000, 4_980, 20_000, 1_234_567].map(thousands);
        assert_eq!(shown, ["0", "7", "999", "1,000", "4,980", "20,000", "1,234,567"]);
    }

    /// `--json` answers pass a cheap look instead of a parse: one object or array.
    #[test]
    fn json_documents_are_recognised_by_their_ends() {
        for good in [&b"[]"[..], b" {\"a\":1}\n", b"[{\"id\":\"W-1\"}]"] {
            assert!(looks_like_one_json_document(&[good]), "{good:?}");
        }
        assert!(looks_like_one_json_document(&[&b" \n"[..], b" [{\"id\"", b":1}", b"] ", b"\n"]));
        assert_eq!(trimmed(&[&b" \n"[..], b" [1,", b"2] ", b"\n"]), [&b"[1,"[..], b"2]"]);
        for bad in [&b""[..], b"  ", b"<html>", b"[{}", b"{]", b"null"] {
            assert!(!looks_like_one_json_document(&[bad]), "{bad:?}");
        }
        let nothing: [&[u8]; 0] = [];
        assert!(!looks_like_one_json_document(&nothing));
    }

    /// `task show` puts every part of a task in a block people can scan.
    #[test]
    fn task_block_shows_holder_progress_lost_claims_and_handoffs() {
        let mut task = claimed(sample_task("WRK-7", "Speed up sync"));
        task.description = "Measure first.\nThen cut the copies.".to_owned();
        task.depends_on = vec![meshwork_protocol::TaskId::new("WRK-6").unwrap_or_else(|_| panic!())];
        task.requires = vec!["os=linux".to_owned(), "tool:cargo".to_owned()];
        task.progress.push(ProgressView {
            at: "2026-11-21T06:07:00.000Z".to_owned(),
            agent: "claude-1".to_owned(),
            node_id: NODE_A.to_owned(),
            message: "profiled".to_owned(),
            percent: Some(40),
        });
        task.lost_claims.push(LostClaimView {
            agent: "bob".to_owned(),
            node_id: "12D3KooWOtherNodeXXXXXXXXXXXXXXXXXXXXXXXXXXXXZz9y8x".to_owned(),
            claim_id: "c0".to_owned(),
            generation: 0,
            claimed_at: "2026-11-21T06:01:00.000Z".to_owned(),
            reason: "lease expired".to_owned(),
        });
        task.handoffs.push(HandoffView {
            at: "2026-11-21T06:04:00.000Z".to_owned(),
            agent: "bob".to_owned(),
            node_id: "12D3KooWOtherNodeXXXXXXXXXXXXXXXXXXXXXXXXXXXXZz9y8x".to_owned(),
            commits: vec!["abc123".to_owned()],
            files: Vec::new(),
            tests: vec!["cargo test -p meshwork-crdt".to_owned()],
            risks: Vec::new(),
            next: "remove the second clone".to_owned(),
        });
        task.result = Some(ResultView {
            summary: "2x faster".to_owned(),
            by: "claude-1@laptop".to_owned(),
            at: "2026-11-21T06:30:00.000Z".to_owned(),
        });
        expect_test::expect![[r#"
            WRK-7  Speed up sync
            status:      claimed
            holder:      claude-1@laptop since 2026-11-21T06:05:00.000Z, lease until 2026-11-21T06:35:00.000Z, confirmed by a quorum
            priority:    0
            attempts:    1 of at most 3, generation 1
            lease:       30m
            depends on:  WRK-6
            requires:    os=linux, tool:cargo
            result:      2x faster (by claude-1@laptop at 2026-11-21T06:30:00.000Z)
            created:     2026-11-21T06:00:00.000Z by ann@laptop
            updated:     2026-11-21T06:10:00.000Z
            description:
              Measure first.
              Then cut the copies.
            progress:
              2026-11-21T06:07:00.000Z  claude-1@…cDeFgHiJ  40%  profiled
            lost claims:
              bob@…XXZz9y8x (generation 0, claimed 2026-11-21T06:01:00.000Z): lease expired
            handoffs:
              2026-11-21T06:04:00.000Z by bob@…XXZz9y8x
                commits:  abc123
                tests:    cargo test -p meshwork-crdt
                next:     remove the second clone
        "#]]
        .assert_eq(&task_block(&live(task)));
    }

    /// Mutations confirm in one line that names the task and what changed.
    #[test]
    fn mutations_confirm_in_one_line() {
        let open = sample_task("WRK-1", "t");
        let mut blocked = sample_task("WRK-2", "t");
        blocked.blocked_by = vec![open.id.clone()];
        let mut out_of_attempts = sample_task("WRK-3", "t");
        out_of_attempts.status = TaskStatus::Failed;
        out_of_attempts.attempts = 3;
        let mut failed_once = sample_task("WRK-4", "t");
        failed_once.attempts = 1;
        let lines = [
            task(TaskAction::Added, &live(open.clone())),
            task(TaskAction::Added, &live(blocked)),
            task(TaskAction::Claimed, &live(claimed(open.clone()))),
            task(TaskAction::Renewed, &live(claimed(open.clone()))),
            task(TaskAction::Failed, &live(out_of_attempts)),
            task(TaskAction::Failed, &live(failed_once)),
        ];
        expect_test::expect![[r#"
            added WRK-1
            added WRK-2 (blocked by WRK-1)
            claimed WRK-1 (generation 1, lease until 2026-11-21T06:35:00.000Z)
            renewed WRK-1 (lease until 2026-11-21T06:35:00.000Z)
            WRK-3 failed for good after 3 attempts
            recorded the failure of WRK-4; it is open again (attempt 1 of at most 3)
        "#]]
        .assert_eq(&lines.concat());
    }

    /// `node status` lists the node's facts, then its peers in a table.
    #[test]
    fn node_status_lists_facts_then_peers() {
        let status = NodeStatus {
            api_version: 1,
            node_id: NODE_A.to_owned(),
            name: "laptop".to_owned(),
            mesh_id: "mesh-1".to_owned(),
            home: "/home/ann/.local/share/meshwork".to_owned(),
            offline: false,
            listen: vec!["/ip4/0.0.0.0/udp/4001/quic-v1".to_owned(), "/ip4/0.0.0.0/tcp/4001".to_owned()],
            peers: vec![
                PeerView {
                    node_id: "12D3KooWPeer1".to_owned(),
                    name: "desk".to_owned(),
                    addrs: vec!["/ip4/10.0.0.2/tcp/4001".to_owned()],
                    connected: true,
                    last_seen: None,
                    rtt_ms: Some(0.4),
                    connected_since: Some("2026-11-21T05:00:00.000Z".to_owned()),
                    bad_frames: 0,
                },
                PeerView {
                    node_id: "12D3KooWPeer2".to_owned(),
                    name: "ci".to_owned(),
                    addrs: Vec::new(),
                    connected: false,
                    last_seen: Some("2026-11-20T10:00:00.000Z".to_owned()),
                    rtt_ms: None,
                    connected_since: None,
                    bad_frames: 2,
                },
            ],
            tasks: 12,
            rejected_records: 0,
            refused_connections: 0,
            skipped_files: Vec::new(),
            started_at: "2026-11-21T06:00:00.000Z".to_owned(),
            pid: 4242,
            storage: meshwork_protocol::api::StorageView {
                fsyncs: 10,
                frames_written: 12,
                submissions: 12,
                log_bytes: 4096,
            },
            sync_bytes_sent: 0,
            sync_bytes_received: 0,
        };
        expect_test::expect![[r#"
            node:              laptop (12D3KooWQyZJx1cHRy9bUW2fVwrEpXR5UKpXBv6Nq3aBcDeFgHiJ)
            mesh:              mesh-1
            home:              /home/ann/.local/share/meshwork
            pid:               4242, started 2026-11-21T06:00:00.000Z
            api version:       1
            listening on:      /ip4/0.0.0.0/udp/4001/quic-v1
                               /ip4/0.0.0.0/tcp/4001
            tasks:             12
            rejected records:  0
            peers:
              NAME  NODE ID        STATE                                             ADDRESSES
              desk  12D3KooWPeer1  connected, 0.4 ms                                 /ip4/10.0.0.2/tcp/4001
              ci    12D3KooWPeer2  last seen 2026-11-20T10:00:00.000Z, 2 bad frames
        "#]]
        .assert_eq(&node_status(&status));
    }

    /// `mesh members` is a table; the founder was added by nobody.
    #[test]
    fn members_table_marks_the_founder() {
        let members = [
            MemberView {
                node_id: NODE_A.to_owned(),
                name: "laptop".to_owned(),
                added_by: String::new(),
                added_at: "2026-11-21T06:00:00.000Z".to_owned(),
            },
            MemberView {
                node_id: "12D3KooWPeer1".to_owned(),
                name: "desk".to_owned(),
                added_by: NODE_A.to_owned(),
                added_at: "2026-11-21T07:00:00.000Z".to_owned(),
            },
        ];
        expect_test::expect![[r#"
            NAME    NODE ID                                               ADDED BY                                              ADDED AT
            laptop  12D3KooWQyZJx1cHRy9bUW2fVwrEpXR5UKpXBv6Nq3aBcDeFgHiJ  -                                                     2026-11-21T06:00:00.000Z
            desk    12D3KooWPeer1                                         12D3KooWQyZJx1cHRy9bUW2fVwrEpXR5UKpXBv6Nq3aBcDeFgHiJ  2026-11-21T07:00:00.000Z
        "#]]
        .assert_eq(&members_table(&members));
    }

    /// Durations print the way users type them.
    #[test]
    fn durations_print_in_the_largest_whole_unit() {
        let printed: Vec<String> = [1_800_000, 90_000, 86_400_000, 7_200_000, 1500, 0].map(format_duration_ms).to_vec();
        assert_eq!(printed, ["30m", "90s", "1d", "2h", "1500ms", "0ms"]);
    }

    #[test]
    fn probe_aligns_keys_and_shows_sizes_in_gib() {
        // Goal: `meshwork caps` output is stable: aligned keys, GiB, one row per list item.
        let probe = Probe {
            os: "linux".to_owned(),
            os_version: "24.04".to_owned(),
            kernel: "6.8.0-48-generic".to_owned(),
            arch: "x86_64".to_owned(),
            hostname: "box".to_owned(),
            cpu_model: String::new(),
            cpus: 16,
            memory_bytes: 64 * BYTES_PER_GIB,
            disk_free_bytes: BYTES_PER_GIB * 3 / 2,
            gpus: vec![meshwork_protocol::probe::Gpu {
                model: "NVIDIA A100".to_owned(),
                memory_bytes: 80 * BYTES_PER_GIB,
            }],
            tools: [("cargo", "cargo 1.95.0"), ("go", ""), ("python3", "Python 3.12.3")]
                .into_iter()
                .map(|(name, version)| (name.to_owned(), version.to_owned()))
                .collect(),
            labels: Vec::new(),
        };
        let expected = "\
os:         linux
os version: 24.04
kernel:     6.8.0-48-generic
arch:       x86_64
hostname:   box
cpu:        unknown
cpus:       16
memory:     64.0 GiB
disk free:  1.5 GiB
gpus:       NVIDIA A100 (80.0 GiB)
tools:      cargo   cargo 1.95.0
            go
            python3 Python 3.12.3
labels:     none
";
        assert_eq!(super::probe(&probe), expected);
    }
}
