lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        update {
            let d = g;
            let d = g * 2;
            p = p - lr * d;
        }
    }
}

fn main() {}
