lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        view p - lr * g;
        update {
            p = p - lr * g;
        }
    }
}

fn main() {}
