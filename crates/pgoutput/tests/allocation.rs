//! The decoder's allocations are bounded by the payload's length, never by a count or length
//! read from it.
//!
//! This test binary installs a global allocator that records, per thread, the largest single
//! allocation (or reallocation) made while a decode runs; a count of 65535 columns or an
//! `Int32` length of 2 GiB in a 20-byte payload must not reserve memory for what is announced.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use common::{valid_cases, wire, REL};
use pgoutput::Decoder;
use proptest::prelude::*;

/// Largest bytes one decoded element takes per payload byte it needs (a TupleColumn is about
/// 40 bytes and needs at least 1), with room to spare; a fixed allowance covers small strings.
const BYTES_PER_PAYLOAD_BYTE: usize = 64;
const FIXED_ALLOWANCE: usize = 256;

struct Tracking;

thread_local! {
    /// Largest allocation on this thread since the last `reset`; `const` so that reading it
    /// never allocates (which would recurse into the allocator).
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // `try_with` fails only while the thread is being torn down; nothing to record then.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; recording a size has no
// effect on the memory returned.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Decodes `payload` (whole, then as a prefix) and returns the largest single allocation made.
fn largest_allocation_decoding(decoder: &Decoder, payload: &Bytes) -> usize {
    let mut whole = decoder.clone();
    let mut prefix = decoder.clone();
    LARGEST.with(|largest| largest.set(0));
    let whole_result = whole.decode(payload.clone());
    let prefix_result = prefix.decode_prefix(payload);
    let largest = LARGEST.with(Cell::get);
    drop((whole_result, prefix_result));
    largest
}

fn bound(payload: &Bytes) -> usize {
    payload.len() * BYTES_PER_PAYLOAD_BYTE + FIXED_ALLOWANCE
}

#[test]
fn the_tracker_sees_allocations() {
    LARGEST.with(|largest| largest.set(0));
    let big = vec![0u8; 100_000];
    assert!(LARGEST.with(Cell::get) >= 100_000);
    drop(big);
}

#[test]
fn hostile_counts_and_lengths_allocate_by_payload_size() {
    let hostile = [
        ("tuple of 65535 columns", wire(&[b"I", &REL.to_be_bytes(), b"N", &u16::MAX.to_be_bytes(), b"nnnn"])),
        (
            "relation of 65535 columns",
            wire(&[
                b"R",
                &REL.to_be_bytes(),
                b"s\0t\0d",
                &u16::MAX.to_be_bytes(),
                b"\x01k\0\0\0\0\x19\xff\xff\xff\xff",
            ]),
        ),
        ("truncate of 2^31-1 relations", wire(&[b"T", &i32::MAX.to_be_bytes(), &[0], &REL.to_be_bytes()])),
        ("2 GiB text value", wire(&[b"I", &REL.to_be_bytes(), b"N", &[0, 1], b"t", &i32::MAX.to_be_bytes(), b"abc"])),
        ("2 GiB message content", wire(&[b"M", &[0], &1_u64.to_be_bytes(), b"\0", &i32::MAX.to_be_bytes()])),
        ("unterminated gid", wire(&[b"b", &[0; 28], &[b'g'; 40]])),
    ];
    for (name, payload) in hostile {
        let largest = largest_allocation_decoding(&Decoder::new(1), &payload);
        assert!(largest <= bound(&payload), "{name}: {largest} bytes for a {}-byte payload", payload.len());
    }
}

#[test]
fn valid_messages_allocate_by_payload_size() {
    for case in valid_cases() {
        let largest = largest_allocation_decoding(&case.decoder, &case.payload);
        assert!(largest <= bound(&case.payload), "{}: {largest} bytes", case.name);
    }
}

proptest! {
    #[test]
    fn random_bodies_allocate_by_payload_size(
        tag in prop::sample::select(&b"BCORYIUDTMSEcAbPKrp"[..]),
        count in prop_oneof![Just(u16::MAX), any::<u16>()],
        body in proptest::collection::vec(prop_oneof![Just(0u8), Just(b'n'), Just(0xFF), any::<u8>()], 0..48),
        version in 1u32..=4,
    ) {
        // A count right after a short header, where Relation and TupleData read theirs.
        let payload = wire(&[&[tag], &REL.to_be_bytes(), b"N", &count.to_be_bytes(), &body]);
        let decoder = Decoder::new(version).with_parallel_streaming(true);
        let largest = largest_allocation_decoding(&decoder, &payload);
        prop_assert!(largest <= bound(&payload), "{} bytes for {} payload bytes", largest, payload.len());
    }
}
