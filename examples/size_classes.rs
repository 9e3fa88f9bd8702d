//! Prints oxmalloc's size-class table as markdown: `cargo run --example size_classes`.
use oxmalloc::size_class::{SizeClass, CLASS_INFO, NUM_CLASSES};
use oxmalloc::transfer_cache;
use oxmalloc::types::PAGE_SIZE;

fn main() {
    println!("| class | size (B) | pages/span | objects/span | span tail waste | batch | transfer slots |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (c, info) in CLASS_INFO.iter().enumerate().skip(1) {
        let bytes = info.pages as usize * PAGE_SIZE;
        let waste = bytes - info.objects_per_span as usize * info.size as usize;
        println!(
            "| {c} | {} | {} | {} | {:.1}% | {} | {} |",
            info.size,
            info.pages,
            info.objects_per_span,
            100.0 * waste as f64 / bytes as f64,
            info.batch,
            transfer_cache::max_capacity(SizeClass(c as u8))
        );
    }
    println!("\n{} classes (plus class 0 = large)", NUM_CLASSES - 1);
}
