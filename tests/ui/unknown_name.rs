lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        update {
            p = p - lr * q;
        }
    }
}

fn main() {}
