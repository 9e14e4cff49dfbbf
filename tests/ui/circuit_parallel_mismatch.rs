fn main() {
    let _ = lensopt::circuit!((and | not) >> and >> not >> copy >> xor >> and);
}
