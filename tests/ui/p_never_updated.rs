lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        state m = 0;
        update {
            m = m + g;
        }
    }
}

fn main() {}
