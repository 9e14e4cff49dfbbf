lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        update {
            t = 1;
            p = p - lr * g;
        }
    }
}

fn main() {}
