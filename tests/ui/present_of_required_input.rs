lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        input h;
        update {
            p = p - lr * select(present(h), h, g);
        }
    }
}

fn main() {}
