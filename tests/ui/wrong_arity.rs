lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        update {
            p = p - lr * sqrt(g, 2);
        }
    }
}

fn main() {}
