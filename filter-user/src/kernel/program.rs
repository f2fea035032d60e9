//! The embedded XDP object file.

/// The compiled `filter-ebpf` object (the `apifence` XDP program and its maps; the benchmark's
/// programs are an object of their own, in `bench/ebpf`), aligned for `aya::Ebpf::load`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apifence-xdp"));

#[cfg(test)]
mod tests {
    /// The production object holds the filter's program and nothing else.
    #[test]
    fn holds_only_the_filter_program() {
        let object = aya_obj::Object::parse(super::OBJECT).expect("the embedded object parses");
        let names: Vec<&str> = object.programs.keys().map(String::as_str).collect();
        assert_eq!(names, ["apifence"]);
    }
}
