lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        state m = g;
        update {
            m = m + g;
            p = p - lr * m;
        }
    }
}

fn main() {}
