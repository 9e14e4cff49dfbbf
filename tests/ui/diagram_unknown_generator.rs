fn main() {
    let _ = lensopt::diagram!(dense(a, 4, 4) >> gelu(4));
}
