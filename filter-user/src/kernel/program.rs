//! The embedded XDP object file.

/// The compiled `filter-ebpf` object (the `apifence` XDP program and its maps; the benchmark's
/// programs are an object of their own, in `bench/ebpf`), aligned for `aya::Ebpf::load`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apifence-xdp"));

/// The verdict-trace object (`filter-ebpf/src/trace_main.rs`): the same filter, with the same
/// maps, that also reports its verdicts through aya-log; loaded next to the pinned program by
/// `apifence trace` (`kernel::trace`).
pub static TRACE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apifence-trace-xdp"));

#[cfg(test)]
mod tests {
    use filter_common::{ALL_MAPS, PROGRAM_NAME, TRACE_PROGRAM_NAME};

    use super::*;

    /// The production object is compiled without the trace (no trace program, no aya-log ring
    /// buffer), and the trace object defines every pinned map exactly as the production object
    /// does, so that loading it next to the pins reuses them.
    #[test]
    fn the_trace_lives_in_its_own_object_with_the_same_maps() {
        let production = aya_obj::Object::parse(OBJECT).expect("production object");
        // The production object holds the filter's program and nothing else.
        let names: Vec<&str> = production.programs.keys().map(String::as_str).collect();
        assert_eq!(names, [PROGRAM_NAME]);
        let trace = aya_obj::Object::parse(TRACE_OBJECT).expect("trace object");
        assert!(production.programs.contains_key(PROGRAM_NAME));
        assert!(!production.programs.contains_key(TRACE_PROGRAM_NAME));
        assert!(!production.maps.contains_key("AYA_LOGS"));
        assert!(trace.programs.contains_key(TRACE_PROGRAM_NAME));
        assert!(trace.maps.contains_key("AYA_LOGS"));
        for name in ALL_MAPS {
            let (ours, theirs) = (&production.maps[name], &trace.maps[name]);
            let shape = |m: &aya_obj::Map| {
                (
                    m.map_type(),
                    m.key_size(),
                    m.value_size(),
                    m.max_entries(),
                    m.map_flags(),
                    m.pinning(),
                )
            };
            assert_eq!(shape(ours), shape(theirs), "map {name}");
        }
    }
}
