lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        update {
            g = g * 2;
            p = p - lr * g;
        }
    }
}

fn main() {}
