lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        update {
            p = p - lr * select(g > 0, g, g > 1);
        }
    }
}

fn main() {}
