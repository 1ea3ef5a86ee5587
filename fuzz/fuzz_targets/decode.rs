//! Fuzz target `decode`: arbitrary bytes through `pgoutput::Decoder`, with the encoder as the
//! oracle for whatever decodes.
//!
//! # Input
//!
//! The first byte chooses how the rest is read (the seeds in `fuzz/seeds/decode/` are written
//! by `crates/pgoutput/examples/fuzz_seeds.rs` with the same layout):
//!
//! | bits | meaning |
//! |---|---|
//! | 0–1 | protocol version minus one (v1 to v4) |
//! | 2 | `streaming 'parallel'` declared |
//! | 3 | start inside a stream block (a Stream Start is decoded first) |
//! | 4 | capture mode: the rest is a `pg_recvlogical` file, messages each followed by `\n`, read with `decode_prefix`; otherwise the rest is one payload for `decode` (and `decode_prefix`) |
//! | 5–7 | ignored |
//!
//! # Checks (a failed check panics, which libFuzzer reports as a crash)
//!
//! * The decoder never panics.
//! * No single allocation during a decode exceeds `64 × input length + 256` bytes: counts and
//!   lengths read from the input must not size allocations.
//! * `decode` and `decode_prefix` agree: same message, `decode_prefix` consumes the whole
//!   payload exactly when `decode` succeeds, `TrailingBytes` starts where the prefix ended, and
//!   both fail alike otherwise.
//! * A failed decode leaves the stream state alone.
//! * Every decoded message re-encodes with `Encoder::matching` the decoder's prior state, and
//!   those bytes decode to the same message and move the state the same way.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgoutput::{DecodeError, Decoder, Encoder, PgOutputMessage, StreamStart, Xid};

const VERSION_BITS: u8 = 0b0000_0011;
const PARALLEL_BIT: u8 = 0b0000_0100;
const IN_STREAM_BIT: u8 = 0b0000_1000;
const CAPTURE_BIT: u8 = 0b0001_0000;

/// See the module doc: generous for what a decoded element costs per input byte it needs.
const ALLOCATION_BYTES_PER_INPUT_BYTE: usize = 64;
const ALLOCATION_ALLOWANCE: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Some((&config, input)) = data.split_first() else { return };
    let decoder = configured_decoder(config);
    let input = Bytes::copy_from_slice(input);
    if config & CAPTURE_BIT != 0 {
        check_capture(decoder, input);
    } else {
        check_payload(&decoder, &input);
    }
});

fn configured_decoder(config: u8) -> Decoder {
    let version = u32::from(config & VERSION_BITS) + 1;
    let mut decoder = Decoder::new(version).with_parallel_streaming(config & PARALLEL_BIT != 0);
    if config & IN_STREAM_BIT != 0 {
        let start = PgOutputMessage::StreamStart(StreamStart { xid: Xid(1), first_segment: true });
        let bytes = Encoder::matching(&decoder).encode(&start).expect("stream start encodes outside a block");
        decoder.decode(bytes).expect("stream start decodes outside a block");
    }
    decoder
}

/// One payload, through both `decode` and `decode_prefix`.
fn check_payload(before: &Decoder, payload: &Bytes) {
    let mut whole = before.clone();
    let whole_result = with_bounded_allocations(payload.len(), || whole.decode(payload.clone()));
    let mut prefix = before.clone();
    let prefix_result = with_bounded_allocations(payload.len(), || prefix.decode_prefix(payload));

    match (&whole_result, &prefix_result) {
        (Ok(message), Ok((prefix_message, consumed))) => {
            assert_eq!(message, prefix_message);
            assert_eq!(*consumed, payload.len(), "decode accepted the payload, so it is all one message");
            assert_eq!(whole.in_stream_block(), prefix.in_stream_block());
        }
        (Ok(_), Err(error)) => panic!("decode accepted what decode_prefix refused: {error}"),
        (Err(DecodeError::TrailingBytes { offset, remaining }), Ok((_, consumed))) => {
            assert_eq!(offset, consumed, "trailing bytes start where the message ended");
            assert_eq!(offset + remaining, payload.len());
        }
        (Err(error), Ok(_)) => panic!("decode_prefix accepted what decode refused with {error}"),
        (Err(whole_error), Err(prefix_error)) => assert_eq!(whole_error, prefix_error),
    }
    if whole_result.is_err() {
        assert_eq!(whole.in_stream_block(), before.in_stream_block(), "a failed decode moved the state");
    }
    match prefix_result {
        Ok((message, _)) => assert_reencodes(before, &prefix, &message),
        Err(_) => assert_eq!(prefix.in_stream_block(), before.in_stream_block(), "a failed decode moved the state"),
    }
}

/// A `pg_recvlogical` capture: messages back to back, each followed by a newline.
fn check_capture(mut decoder: Decoder, mut rest: Bytes) {
    while !rest.is_empty() {
        let before = decoder.clone();
        match with_bounded_allocations(rest.len(), || decoder.decode_prefix(&rest)) {
            Ok((message, consumed)) => {
                assert!(consumed <= rest.len());
                assert_reencodes(&before, &decoder, &message);
                assert_eq!(before.clone().decode(rest.slice(..consumed)), Ok(message));
                if rest.get(consumed) != Some(&b'\n') {
                    return;
                }
                rest = rest.slice(consumed + 1..);
            }
            Err(_) => {
                assert_eq!(decoder.in_stream_block(), before.in_stream_block(), "a failed decode moved the state");
                return;
            }
        }
    }
}

/// The oracle: `message`, decoded by a decoder in state `before` (now in state `after`), has
/// a wire form in that state which decodes back to it.
fn assert_reencodes(before: &Decoder, after: &Decoder, message: &PgOutputMessage) {
    let mut encoder = Encoder::matching(before);
    let bytes = encoder.encode(message).unwrap_or_else(|error| panic!("decoded message does not encode: {error}"));
    let mut again = before.clone();
    assert_eq!(again.decode(bytes).as_ref(), Ok(message), "re-encoded message decodes differently");
    assert_eq!(again.in_stream_block(), after.in_stream_block());
    assert_eq!(encoder.in_stream_block(), after.in_stream_block());
}

/// Runs `decode` and fails if any single allocation it made was out of proportion to the input.
fn with_bounded_allocations<T>(input_len: usize, decode: impl FnOnce() -> T) -> T {
    LARGEST_ALLOCATION.with(|largest| largest.set(0));
    let result = decode();
    let largest = LARGEST_ALLOCATION.with(Cell::get);
    let bound = input_len * ALLOCATION_BYTES_PER_INPUT_BYTE + ALLOCATION_ALLOWANCE;
    assert!(largest <= bound, "decoding {input_len} bytes allocated {largest} bytes at once");
    result
}

thread_local! {
    /// Largest allocation on this thread since the last reset; `const` so that reading it never
    /// allocates (which would recurse into the allocator).
    static LARGEST_ALLOCATION: Cell<usize> = const { Cell::new(0) };
}

fn record_allocation(size: usize) {
    // `try_with` fails only while the thread is being torn down; nothing to record then.
    let _ = LARGEST_ALLOCATION.try_with(|largest| largest.set(largest.get().max(size)));
}

/// Forwards to the system allocator, recording allocation sizes for the bound above.
struct Tracking;

// SAFETY: every call is forwarded unchanged to the system allocator; recording a size has no
// effect on the memory returned.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record_allocation(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record_allocation(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record_allocation(new_size);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;
