lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1, nesterov = false;
        update {
            p = p - nesterov * g;
        }
    }
}

fn main() {}
