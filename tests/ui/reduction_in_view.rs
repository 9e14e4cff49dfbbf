lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        view p / norm(p);
        update {
            p = p - lr * g;
        }
    }
}

fn main() {}
