lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1, lr = 0.2;
        update {
            p = p - lr * g;
        }
    }
}

fn main() {}
