fn main() {
    let _ = lensopt::diagram!((dense(a, 4, 3) | dense(b, 2, 2)) >> add(3));
}
