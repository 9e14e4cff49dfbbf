lensopt::optimizer! {
    pub Bad {
        hyperparams lr = 0.1;
        update {
            p = p - g;
        }
    }
}

fn main() {}
