fn main() {
    println!("{}", dragonflow_agent::datapath::EBPF_OBJECT.len());
}
