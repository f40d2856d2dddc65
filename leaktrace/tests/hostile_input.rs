//! Hostile input: everything leaktrace parses that a traced process (or a saved file) controls
//! must give a bounded, orderly answer for any bytes at all — never a panic.
//!
//! Property tests (proptest) rather than a coverage-guided fuzzer: they run in every `cargo
//! xtask test`, on the stable toolchain, in seconds.
#![allow(
    unused_crate_dependencies,
    reason = "the library's dependencies are not used here"
)]

use leaktrace::{
    probe::placement::{self, Needs},
    process::maps,
    symbolize::perfmap,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn proc_maps_text_never_panics(text in ".{0,400}") {
        for m in maps::parse(&text) {
            prop_assert!(m.path.as_ref().is_none_or(|p| p.is_absolute()));
        }
    }

    #[test]
    fn proc_maps_lines_that_look_right_parse(
        start in any::<u32>(), len in 1u32..1 << 20, offset in any::<u32>(), inode in any::<u32>(),
        path in "(/[a-z0-9._-]{1,12}){1,4}( \\(deleted\\))?",
    ) {
        let line = format!(
            "{:x}-{:x} r-xp {:08x} fe:01 {inode} {path}\n",
            u64::from(start), u64::from(start) + u64::from(len), offset
        );
        let parsed = maps::parse(&line);
        prop_assert_eq!(parsed.len(), 1);
        prop_assert_eq!(parsed[0].inode, u64::from(inode));
        prop_assert!(parsed[0].is_executable());
    }

    #[test]
    fn perf_map_names_never_panic(name in ".{0,200}") {
        if let Some(js) = perfmap::parse_js_name(&name) {
            prop_assert!(!js.function.is_empty());
        }
    }

    #[test]
    fn perf_map_files_of_junk_are_read_boundedly(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("perf.map");
        std::fs::write(&path, &bytes).unwrap();
        let mut map = perfmap::PerfMap::default();
        prop_assert!(map.refresh(&path).is_ok());
        prop_assert!(map.len() <= bytes.iter().filter(|&&b| b == b'\n').count());
        let _ = map.lookup(0x1000);
    }

    #[test]
    fn prologue_decoder_never_panics(code in proptest::collection::vec(any::<u8>(), 0..128), ip in any::<u64>()) {
        let placed = placement::choose(
            &code,
            ip,
            Needs { arg_regs: &[iced_x86::Register::RDI], stack_pointer: true },
        );
        prop_assert!(placed.offset <= placement::MAX_PROBE_OFFSET);
    }

    #[test]
    fn elf_reader_rejects_junk_without_panicking(elf in proptest::collection::vec(any::<u8>(), 0..2048)) {
        // Random bytes are no ELF object defining malloc: an error, never code to probe.
        let read = placement::function_bytes(&elf, "malloc", 64);
        prop_assert!(read.is_err(), "junk accepted: {:?}", read.map(|c| c.address));
    }

    #[test]
    fn saved_reports_of_junk_are_refused_with_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        std::fs::write(&path, &bytes).unwrap();
        prop_assert!(leaktrace::report::read(&path).is_err());
    }
}

proptest! {
    #[test]
    fn durations_never_panic(text in ".{0,40}") {
        if let Ok(d) = leaktrace::parse::parse_duration(&text) {
            prop_assert!(!d.is_zero());
        }
    }
}
