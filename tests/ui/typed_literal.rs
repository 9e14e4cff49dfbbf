lensopt::optimizer! {
    pub Bad {
        hyper lr = 0.1;
        update {
            p = p - 0.5f32 * g;
        }
    }
}

fn main() {}
