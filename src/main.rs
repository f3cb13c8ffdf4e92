//! The `lior` command line: parses arguments and starts things; holds no logic worth testing.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    println!("lior");
}
