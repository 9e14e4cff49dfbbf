lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        update {
            p = p - lr * select(g, 1, 2);
        }
    }
}

fn main() {}
