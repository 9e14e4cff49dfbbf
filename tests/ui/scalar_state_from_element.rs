lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        state scalar k = 0;
        update {
            k = g * g;
            p = p - lr * g;
        }
    }
}

fn main() {}
