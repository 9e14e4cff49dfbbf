lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        input h;
        update {
            h = h + 1;
            p = p - lr * g;
        }
    }
}

fn main() {}
