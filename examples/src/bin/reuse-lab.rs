//! `reuse-lab`: the tower-reuse benchmark and demo.

fn main() {
    println!("reuse-lab: the benchmark is being built; see the README for its plan.");
}
