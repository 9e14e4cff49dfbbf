lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        update {
            let d = g;
            d = d * 2;
            p = p - lr * d;
        }
    }
}

fn main() {}
