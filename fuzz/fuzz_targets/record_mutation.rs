//! Structured mutations of validly signed records: flipped bits, changed, inserted and
//! removed bytes, truncation, and signatures or record bytes swapped between valid records.
//! Most results still decode as records, so the signature check runs on nearly every input;
//! a mutated record must never verify unless its bytes are those of a valid record (see
//! `meshwork_fuzz::check_record_bytes`).

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use meshwork_fuzz::valid_records;
use meshwork_protocol::record::SIGNATURE_BYTES;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Which of the valid records to start from.
    record: u8,
    mutations: Vec<Mutation>,
}

/// Positions are taken modulo the current length, so every mutation applies.
#[derive(Debug, Arbitrary)]
enum Mutation {
    FlipBits {
        at: u16,
        mask: u8,
    },
    SetByte {
        at: u16,
        byte: u8,
    },
    Insert {
        at: u16,
        bytes: Vec<u8>,
    },
    Remove {
        at: u16,
        count: u8,
    },
    Truncate {
        at: u16,
    },
    /// Another valid record's signature in place of this one's.
    SwapSignature {
        from: u8,
    },
    /// Another valid record's record bytes under this one's signature.
    SwapRecordBytes {
        from: u8,
    },
}

fn pick(index: u8) -> &'static [u8] {
    let records = valid_records();
    records[usize::from(index) % records.len()].bytes()
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let at = |at: u16, len: usize| usize::from(at) % len.max(1);
    match *mutation {
        Mutation::FlipBits { at: index, mask } => {
            let index = at(index, bytes.len());
            if let Some(byte) = bytes.get_mut(index) {
                *byte ^= mask;
            }
        }
        Mutation::SetByte { at: index, byte } => {
            let index = at(index, bytes.len());
            if let Some(slot) = bytes.get_mut(index) {
                *slot = byte;
            }
        }
        Mutation::Insert { at: index, bytes: ref inserted } => {
            let index = at(index, bytes.len() + 1);
            bytes.splice(index..index, inserted.iter().copied());
        }
        Mutation::Remove { at: index, count } => {
            let index = at(index, bytes.len());
            let end = (index + usize::from(count)).min(bytes.len());
            bytes.drain(index.min(end)..end);
        }
        Mutation::Truncate { at: index } => bytes.truncate(at(index, bytes.len())),
        Mutation::SwapSignature { from } => {
            let signature = &pick(from)[pick(from).len() - SIGNATURE_BYTES..];
            let keep = bytes.len().saturating_sub(SIGNATURE_BYTES);
            bytes.truncate(keep);
            bytes.extend_from_slice(signature);
        }
        Mutation::SwapRecordBytes { from } => {
            let record_bytes = &pick(from)[..pick(from).len() - SIGNATURE_BYTES];
            let signature = bytes.split_off(bytes.len().saturating_sub(SIGNATURE_BYTES));
            *bytes = [record_bytes, &signature].concat();
        }
    }
}

fuzz_target!(|input: Input| {
    let mut bytes = pick(input.record).to_vec();
    for mutation in &input.mutations {
        apply(&mut bytes, mutation);
    }
    meshwork_fuzz::check_record_bytes(&bytes);
});
