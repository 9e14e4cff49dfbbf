lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
    }
}

fn main() {}
