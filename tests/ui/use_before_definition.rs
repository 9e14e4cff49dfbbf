lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        update {
            let a = b * 2;
            let b = g;
            p = p - lr * a;
        }
    }
}

fn main() {}
