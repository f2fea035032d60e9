fn main() { println!("{}", apifence::program::OBJECT.len()); }
