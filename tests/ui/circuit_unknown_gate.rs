fn main() {
    let _ = lensopt::circuit!(and >> nand);
}
