fn main() {
    let _ = lensopt::diagram!(reshape([2, 3], [5]));
}
