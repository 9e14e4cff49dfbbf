fn main() {
    let _ = lensopt::diagram!(dense(layer, 4, 4) >> relu(4) >> dense(layer, 4, 2));
}
