lensopt::optimizer! {
    pub Bad {
        hyper p = 0.1;
        update {
            p = p - g;
        }
    }
}

fn main() {}
