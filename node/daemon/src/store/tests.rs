//! The store's behaviour on real files: recovery, damage, compaction, group commit, boots.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use meshwork_protocol::storage::{
    DOC_DIR_NAME, LOG_FRAME_HEADER_BYTES, REQUEST_KEY_BYTES_MAX, SEGMENT_HEADER_BYTES, StoreFile,
};

use super::recover::{Recovered, SkippedFile};
use super::writer::{StoreCounters, StoreWriter};
use super::*;
use meshwork_protocol::storage::{Frame, RequestEntry};

fn changes(text: &str) -> Frame {
    Frame::Changes(text.as_bytes().to_vec())
}

fn entry(key: &str) -> RequestEntry {
    RequestEntry { key: key.to_owned(), response: format!("response to {key}").into_bytes(), unix_ms: 42 }
}

fn bytes_of(texts: &[&str]) -> Vec<Vec<u8>> {
    texts.iter().map(|text| text.as_bytes().to_vec()).collect()
}

fn store_dir(home: &tempfile::TempDir) -> PathBuf {
    home.path().join(DOC_DIR_NAME)
}

fn open_store(dir: &Path) -> (StoreWriter, Recovered) {
    open(dir, StoreConfig::default()).unwrap()
}

/// The store files in `dir` by kind, in sequence order.
fn files(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut snapshots = Vec::new();
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        match StoreFile::parse(path.file_name().unwrap().to_str().unwrap()) {
            Some(StoreFile::Snapshot(_)) => snapshots.push(path),
            Some(StoreFile::Segment(_)) => segments.push(path),
            None => {}
        }
    }
    snapshots.sort();
    segments.sort();
    (snapshots, segments)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// Goal: every acknowledged frame comes back, in write order, across restarts. Method: three
/// sessions that each reopen the store, check what came back, and append more.
#[test]
fn appends_across_several_opens_are_recovered_in_order() {
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    let (mut expected_changes, mut expected_requests) = (Vec::new(), Vec::new());
    for session in 0..3 {
        let (mut writer, recovered) = open_store(&dir);
        assert_eq!(recovered.changes, expected_changes);
        assert_eq!(recovered.requests, expected_requests);
        assert!(recovered.skipped.is_empty());
        for index in 0..4 {
            let text = format!("change {session}.{index}");
            let request = entry(&format!("request {session}.{index}"));
            writer.append(&[changes(&text), Frame::Request(request.clone())]).unwrap();
            expected_changes.push(text.into_bytes());
            expected_requests.push(request);
        }
    }
    let (_, recovered) = open_store(&dir);
    assert_eq!(recovered.changes, expected_changes);
    assert_eq!(recovered.requests, expected_requests);
    assert!(recovered.skipped.is_empty());
    assert_eq!(files(&dir).1.len(), 3, "one segment per session that appended");
}

/// Goal: a crash mid-write loses only the frame being written and leaves the file as it is.
/// Method: cut the segment at every byte offset inside its last frame, reopen each time.
#[test]
fn truncated_tail_at_every_offset_is_reported_and_left_in_place() {
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    let (mut writer, _) = open_store(&dir);
    writer.append(&[changes("first"), changes("second")]).unwrap();
    let segment = files(&dir).1[0].clone();
    let last_frame_at = file_len(&segment);
    writer.append(&[Frame::Request(entry("the last frame"))]).unwrap();
    drop(writer);
    let whole = fs::read(&segment).unwrap();
    for cut in last_frame_at..whole.len() as u64 {
        fs::write(&segment, &whole[..cut as usize]).unwrap();
        let (_, recovered) = open_store(&dir);
        assert_eq!(recovered.changes, bytes_of(&["first", "second"]), "cut at {cut}");
        assert!(recovered.requests.is_empty());
        let expected_skip = (cut > last_frame_at).then(|| SkippedFile {
            path: segment.clone(),
            offset: last_frame_at,
            bytes_skipped: cut - last_frame_at,
            reason: SkipReason::TruncatedTail,
        });
        assert_eq!(recovered.skipped, expected_skip.into_iter().collect::<Vec<_>>(), "cut at {cut}");
        assert_eq!(fs::read(&segment).unwrap(), &whole[..cut as usize], "the file is left as it is");
        assert_eq!(files(&dir).1, vec![segment.clone()], "opening alone creates no segment");
    }
}

/// Goal: frames after a torn tail go to a new segment, never after the tail. Method: leave a
/// torn frame at the end of a segment, append in the next session, reopen.
#[test]
fn appends_after_a_torn_tail_go_to_a_new_segment() {
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    open_store(&dir).0.append(&[changes("before the crash")]).unwrap();
    let segment = files(&dir).1[0].clone();
    let torn_at = file_len(&segment);
    let mut bytes = fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2]);
    fs::write(&segment, &bytes).unwrap();
    let (mut writer, recovered) = open_store(&dir);
    assert_eq!(recovered.skipped.len(), 1);
    writer.append(&[changes("after the crash")]).unwrap();
    let (_, recovered) = open_store(&dir);
    assert_eq!(recovered.changes, bytes_of(&["before the crash", "after the crash"]));
    assert_eq!(recovered.skipped[0].offset, torn_at);
    assert_eq!(fs::read(&segment).unwrap(), bytes);
}

/// Goal: corruption costs the rest of its own segment only, and the file stays for the user.
/// Method: flip each byte of a middle frame in turn; later segments must still be read.
#[test]
fn flipped_byte_in_a_middle_frame_skips_the_rest_of_that_segment_only() {
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    let (mut writer, _) = open_store(&dir);
    writer.append(&[changes("one")]).unwrap();
    let segment = files(&dir).1[0].clone();
    let middle_at = file_len(&segment);
    writer.append(&[changes("two, the middle frame")]).unwrap();
    let middle_end = file_len(&segment);
    writer.append(&[changes("three, after the damage in the same segment")]).unwrap();
    open_store(&dir).0.append(&[changes("four, in a later segment")]).unwrap();
    let whole = fs::read(&segment).unwrap();
    for index in middle_at..middle_end {
        let mut damaged = whole.clone();
        damaged[index as usize] ^= 0x01;
        fs::write(&segment, &damaged).unwrap();
        let (_, recovered) = open_store(&dir);
        assert_eq!(recovered.changes, bytes_of(&["one", "four, in a later segment"]), "byte {index}");
        let [skipped] = &recovered.skipped[..] else { panic!("one skip expected, byte {index}") };
        assert_eq!((&skipped.path, skipped.offset), (&segment, middle_at));
        assert_eq!(skipped.bytes_skipped, whole.len() as u64 - middle_at);
        // A damaged length can point past the end of the file, which reads as a torn write.
        if index >= middle_at + 4 {
            assert!(matches!(skipped.reason, SkipReason::Corrupt(_)), "byte {index}");
        }
        assert_eq!(fs::read(&segment).unwrap(), damaged, "the file is left as it is");
    }
}

/// Goal: after a compaction a reopen gives the snapshot and only what followed it, and old
/// files go. Method: append, compact, append, reopen; compact twice more and count files.
#[test]
fn compaction_reopens_from_the_snapshot_and_later_frames_only() {
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    let (mut writer, _) = open_store(&dir);
    writer.append(&[changes("a"), Frame::Request(entry("1"))]).unwrap();
    writer.compact(b"snapshot with a", &[entry("1")]).unwrap();
    assert_eq!(writer.log_bytes(), 0);
    writer.append(&[changes("b"), Frame::Request(entry("2"))]).unwrap();
    assert!(writer.log_bytes() > 0);
    drop(writer);
    let (mut writer, recovered) = open_store(&dir);
    assert_eq!(recovered.snapshot.as_deref(), Some(&b"snapshot with a"[..]));
    assert_eq!(recovered.changes, bytes_of(&["b"]));
    assert_eq!(recovered.requests, vec![entry("1"), entry("2")]);
    assert!(recovered.skipped.is_empty());
    writer.compact(b"snapshot with a b", &[entry("1"), entry("2")]).unwrap();
    writer.append(&[changes("c")]).unwrap();
    writer.compact(b"snapshot with a b c", &[]).unwrap();
    writer.append(&[changes("d")]).unwrap();
    let (_, recovered) = open_store(&dir);
    assert_eq!(recovered.snapshot.as_deref(), Some(&b"snapshot with a b c"[..]));
    assert_eq!(recovered.changes, bytes_of(&["d"]));
    let (snapshots, segments) = files(&dir);
    assert_eq!(snapshots.len(), 2, "the newest snapshot and the one before it");
    assert_eq!(segments.len(), 2, "the segment of c (after the previous snapshot) and of d");
}

/// Goal: a damaged newest snapshot costs nothing while the previous one is kept. Method: two
/// compactions, flip a byte of the newest snapshot, reopen.
#[test]
fn corrupt_newest_snapshot_falls_back_to_the_previous_one() {
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    let (mut writer, _) = open_store(&dir);
    writer.append(&[changes("a")]).unwrap();
    writer.compact(b"snapshot with a", &[entry("1")]).unwrap();
    writer.append(&[changes("b")]).unwrap();
    writer.compact(b"snapshot with a b", &[entry("1")]).unwrap();
    writer.append(&[changes("c")]).unwrap();
    drop(writer);
    let newest = files(&dir).0.pop().unwrap();
    let mut damaged = fs::read(&newest).unwrap();
    damaged[25] ^= 0x20;
    fs::write(&newest, &damaged).unwrap();
    let (_, recovered) = open_store(&dir);
    assert_eq!(recovered.snapshot.as_deref(), Some(&b"snapshot with a"[..]));
    assert_eq!(recovered.changes, bytes_of(&["b", "c"]));
    assert_eq!(recovered.requests, vec![entry("1")]);
    let [skipped] = &recovered.skipped[..] else { panic!("one skip expected") };
    assert_eq!((&skipped.path, skipped.offset), (&newest, 0));
    assert_eq!(skipped.bytes_skipped, damaged.len() as u64);
    assert!(matches!(skipped.reason, SkipReason::Corrupt(_)));
    assert_eq!(fs::read(&newest).unwrap(), damaged, "the file is left as it is");
}

/// Goal: with its only snapshot damaged, the store still recovers every change, because the
/// first compaction removes no segment. Method: compact once, damage the snapshot, reopen.
#[test]
fn corrupt_only_snapshot_falls_back_to_every_segment() {
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    let (mut writer, _) = open_store(&dir);
    writer.append(&[changes("a")]).unwrap();
    writer.compact(b"snapshot with a", &[]).unwrap();
    writer.append(&[changes("b")]).unwrap();
    drop(writer);
    let snapshot = files(&dir).0.pop().unwrap();
    fs::write(&snapshot, b"MWSNAP, then nothing that decodes").unwrap();
    let (_, recovered) = open_store(&dir);
    assert_eq!(recovered.snapshot, None);
    assert_eq!(recovered.changes, bytes_of(&["a", "b"]));
    assert_eq!(recovered.skipped.len(), 1);
}

/// Goal: compaction never removes a file it cannot read back. Method: damage a segment, then
/// compact twice past it; it must still be there, unchanged, while clean ones go.
#[test]
fn compaction_leaves_corrupt_files_in_place() {
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    open_store(&dir).0.append(&[changes("a"), changes("b")]).unwrap();
    let corrupt = files(&dir).1[0].clone();
    let mut damaged = fs::read(&corrupt).unwrap();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x01;
    fs::write(&corrupt, &damaged).unwrap();
    let (mut writer, recovered) = open_store(&dir);
    assert_eq!(recovered.changes, bytes_of(&["a"]));
    writer.append(&[changes("c")]).unwrap();
    let clean = files(&dir).1[1].clone();
    writer.compact(b"snapshot 1", &[]).unwrap();
    writer.append(&[changes("d")]).unwrap();
    writer.compact(b"snapshot 2", &[]).unwrap();
    assert_eq!(fs::read(&corrupt).unwrap(), damaged);
    assert!(!clean.exists(), "a clean segment the previous snapshot covers is removed");
}

/// Goal: a frame a reader would refuse is refused before anything reaches the disk. Method:
/// append a request with an over-long key alongside a good frame.
#[test]
fn over_limit_frame_is_refused_before_anything_is_written() {
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    let (mut writer, _) = open_store(&dir);
    let long_key = "k".repeat(REQUEST_KEY_BYTES_MAX + 1);
    let result = writer.append(&[changes("good"), Frame::Request(entry(&long_key))]);
    assert!(matches!(result, Err(StoreError::OverLimit { .. })), "{result:?}");
    assert!(files(&dir).1.is_empty());
    writer.append(&[changes("good")]).unwrap();
    assert_eq!(open_store(&dir).1.changes, bytes_of(&["good"]));
}

/// Goal: an interrupted snapshot write is cleaned up and opening alone writes nothing.
/// Method: leave a `.tmp` snapshot, open, check the directory.
#[test]
fn open_removes_unfinished_writes_and_creates_no_segment() {
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    fs::create_dir_all(&dir).unwrap();
    let temp = dir.join("snapshot-0000000003.am.tmp");
    let foreign = dir.join("notes.txt");
    fs::write(&temp, b"half a snapshot").unwrap();
    fs::write(&foreign, b"not ours").unwrap();
    let (writer, recovered) = open_store(&dir);
    assert!(recovered.skipped.is_empty() && recovered.snapshot.is_none());
    assert!(!temp.exists());
    assert!(foreign.exists(), "files that are not the store's are left alone");
    assert_eq!(files(&dir), (vec![], vec![]));
    assert_eq!(writer.counters(), StoreCounters::default());
}

/// Goal: the store keeps exactly what Automerge needs to rebuild the document. Method: store
/// `save_incremental` chunks around a compaction, recover with `load` + `load_incremental`,
/// compare heads.
#[test]
fn automerge_changes_round_trip_through_the_store() {
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    let (mut writer, _) = open_store(&dir);
    let mut doc = AutoCommit::new();
    for round in 0..3_i64 {
        doc.put(ROOT, format!("key {round}"), round).unwrap();
        doc.put(ROOT, "last", round).unwrap();
        writer.append(&[Frame::Changes(doc.save_incremental())]).unwrap();
    }
    let (_, recovered) = open_store(&dir);
    let mut from_changes = AutoCommit::new();
    for chunk in &recovered.changes {
        from_changes.load_incremental(chunk).unwrap();
    }
    assert_eq!(from_changes.get_heads(), doc.get_heads());
    writer.compact(&doc.save(), &[]).unwrap();
    for round in 3..6_i64 {
        doc.put(ROOT, "last", round).unwrap();
        writer.append(&[Frame::Changes(doc.save_incremental())]).unwrap();
    }
    let (_, recovered) = open_store(&dir);
    let mut restored = AutoCommit::load(&recovered.snapshot.unwrap()).unwrap();
    for chunk in &recovered.changes {
        restored.load_incremental(chunk).unwrap();
    }
    assert_eq!(recovered.changes.len(), 3);
    assert_eq!(restored.get_heads(), doc.get_heads());
}

/// Goal: concurrent submitters share fsyncs and every acknowledged frame is durable, in each
/// submitter's order. Method: 16 tasks each write 100 frames one after the other; count
/// fsyncs, then reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_shares_fsyncs_between_concurrent_submitters() {
    const CLIENTS: usize = 16;
    const FRAMES_PER_CLIENT: usize = 100;
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    let handle = StoreHandle::spawn(open_store(&dir).0).unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (handle, start) = (handle.clone(), Arc::clone(&start));
        clients.push(tokio::spawn(async move {
            start.wait().await;
            for index in 0..FRAMES_PER_CLIENT {
                handle.write(vec![changes(&format!("{client:02} {index:03}"))]).await.unwrap();
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let counters = handle.counters();
    let submissions = (CLIENTS * FRAMES_PER_CLIENT) as u64;
    assert_eq!((counters.frames_written, counters.submissions), (submissions, submissions));
    assert!(counters.fsyncs < submissions, "{} fsyncs for {submissions} submissions", counters.fsyncs);
    handle.shutdown().await.unwrap();
    let after = handle.write(vec![changes("too late")]).await;
    assert!(matches!(after, Err(StoreError::Closed { .. })), "{after:?}");
    let (_, recovered) = open_store(&dir);
    assert_eq!(recovered.changes.len(), CLIENTS * FRAMES_PER_CLIENT);
    for client in 0..CLIENTS {
        let prefix = format!("{client:02} ");
        let mine: Vec<_> = recovered.changes.iter().filter(|change| change.starts_with(prefix.as_bytes())).collect();
        let expected: Vec<_> = (0..FRAMES_PER_CLIENT).map(|index| format!("{prefix}{index:03}").into_bytes()).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "client {client} in order");
    }
}

/// Goal: a failed write reaches every submission of its batch, and the next batch succeeds on
/// a fresh segment. Method: occupy the next segment names with directories so creating a
/// segment fails, submit three times, free the names, submit again.
#[tokio::test]
async fn failed_batch_answers_every_submission_and_the_next_one_succeeds() {
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    let handle = StoreHandle::spawn(open_store(&dir).0).unwrap();
    // However the thread batches the three, each batch takes one of these names and fails.
    let blockers: Vec<_> = (1..=3).map(|sequence| dir.join(StoreFile::Segment(sequence).file_name())).collect();
    blockers.iter().for_each(|blocker| fs::create_dir(blocker).unwrap());
    let mut answers = Vec::new();
    for index in 0..3 {
        answers.push(handle.submit(vec![changes(&format!("lost {index}"))]).await);
    }
    for answer in answers {
        let result = answer.await.unwrap();
        assert!(matches!(result, Err(StoreError::Write { .. })), "{result:?}");
    }
    blockers.iter().for_each(|blocker| fs::remove_dir(blocker).unwrap());
    handle.write(vec![changes("kept")]).await.unwrap();
    handle.shutdown().await.unwrap();
    assert_eq!(open_store(&dir).1.changes, bytes_of(&["kept"]));
}

/// Goal: a compaction submitted through the handle is ordered after earlier submissions.
/// Method: submit frames then a compaction without waiting, reopen.
#[tokio::test]
async fn compaction_through_the_handle_follows_earlier_submissions() {
    let home = tempfile::tempdir().unwrap();
    let dir = store_dir(&home);
    let handle = StoreHandle::spawn(open_store(&dir).0).unwrap();
    let before = handle.submit(vec![changes("in the snapshot")]).await;
    let compacted = handle.compact(b"snapshot".to_vec(), vec![entry("1")]).await;
    let after = handle.submit(vec![changes("after the snapshot")]).await;
    for answer in [before, compacted, after] {
        answer.await.unwrap().unwrap();
    }
    assert_eq!(handle.counters().log_bytes, (SEGMENT_HEADER_BYTES + LOG_FRAME_HEADER_BYTES + 18) as u64);
    handle.shutdown().await.unwrap();
    let (_, recovered) = open_store(&dir);
    assert_eq!(recovered.snapshot.as_deref(), Some(&b"snapshot"[..]));
    assert_eq!(recovered.changes, bytes_of(&["after the snapshot"]));
    assert_eq!(recovered.requests, vec![entry("1")]);
}

/// Goal: the actors' files (sync states, start caches) are written by the store's thread,
/// whole, in a directory created on demand, and a shutdown waits for them. Method: queue two
/// versions of one file and a shutdown, then read it back.
#[tokio::test]
async fn files_handed_to_the_store_are_written_whole_before_it_stops() {
    let home = tempfile::tempdir().unwrap();
    let handle = StoreHandle::spawn(open_store(&store_dir(&home)).0).unwrap();
    let path = home.path().join("sync").join("peer.state");
    let first = handle.replace_file(path.clone(), b"first".to_vec()).await;
    let _second = handle.replace_file(path.clone(), b"second".to_vec()).await;
    first.await.unwrap().unwrap();
    handle.shutdown().await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file is left: {leftovers:?}");
}

/// Goal: boot numbers strictly increase and survive in the file. Method: call next_boot
/// repeatedly on one home and read the file back.
#[test]
fn boot_counter_strictly_increases_across_calls() {
    let home = tempfile::tempdir().unwrap();
    let boots: Vec<u32> = (0..5).map(|_| next_boot(home.path()).unwrap()).collect();
    assert_eq!(boots, vec![1, 2, 3, 4, 5]);
    assert_eq!(fs::read_to_string(home.path().join("boot")).unwrap(), "5\n");
    assert!(!home.path().join("boot.tmp").exists());
}

/// Goal: a damaged boot file is an error naming it, never a silent restart. Method: write
/// garbage, and an over-long number, and call next_boot.
#[test]
fn corrupt_boot_file_is_an_error_naming_the_path() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("boot");
    for garbage in [&b"seven\n"[..], b"", b"12345678901234567890\n", b"\0\0\0\0"] {
        fs::write(&path, garbage).unwrap();
        let error = next_boot(home.path()).unwrap_err();
        assert!(matches!(&error, StoreError::BootCorrupt { path: named, .. } if *named == path));
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
        assert_eq!(fs::read(&path).unwrap(), garbage, "the file is left as it is");
    }
}
