fn main() {
    let _ = lensopt::diagram!(dense(a, 4) >> relu(4));
}
