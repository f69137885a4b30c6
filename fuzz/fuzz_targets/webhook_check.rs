//! The whole request check, query string and body to event or refusal, on arbitrary bytes.
//! Input: the query string, a newline, then the body (see `tim_kafka_bridge::webhook::fuzz_check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // fuzz_check asserts what must hold whatever the input; an event and a refusal are both answers,
    // so every input stays in the corpus.
    let _event_or_refusal = tim_kafka_bridge::webhook::fuzz_check(data);
});
