lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        update {
            lr = 0.2;
            p = p - lr * g;
        }
    }
}

fn main() {}
