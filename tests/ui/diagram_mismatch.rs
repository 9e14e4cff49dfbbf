fn main() {
    let _ = lensopt::diagram!(dense(hidden, 64, 128) >> relu(64));
}
