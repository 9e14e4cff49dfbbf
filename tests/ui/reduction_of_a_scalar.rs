lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        update {
            p = p - sum(lr) * g;
        }
    }
}

fn main() {}
