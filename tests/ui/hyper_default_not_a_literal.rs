lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1 * 2;
        update {
            p = p - lr * g;
        }
    }
}

fn main() {}
