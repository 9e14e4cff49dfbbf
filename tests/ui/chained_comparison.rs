lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        update {
            p = select(0 < g < 1, p - lr * g, p);
        }
    }
}

fn main() {}
