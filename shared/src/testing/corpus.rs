//! A small text corpus for end-to-end tests with a real sentence model: eight documents of
//! three sentences on distinct topics, and for each a query worded unlike any of its sentences.

/// (id, text) of each document.
pub const CORPUS: &[(&str, &str)] = &[
    ("horse", "A man is riding a white horse on the beach. The sun sets behind him. Gulls cry over the water."),
    ("pasta", "She cooks pasta for dinner tonight. The kitchen smells of garlic and basil. Her friends arrive at eight."),
    ("rain", "Heavy rain falls on the quiet city. The streets shine under the lamps. Nobody is outside."),
    ("guitar", "The boy plays an old guitar in the park. A small crowd gathers to listen. He sings a folk song."),
    ("code", "The engineers fixed a bug in the database driver. Queries are fast again. The release ships tomorrow."),
    ("football", "The team scored a late goal to win the match. Fans celebrated in the stadium. The coach was proud."),
    ("garden", "Tomatoes and beans grow in the small garden. The old woman waters them every morning. Bees visit the flowers."),
    ("train", "The night train to Vienna leaves at ten. Passengers sleep in narrow bunks. It arrives at dawn."),
];

/// Queries phrased differently from any sentence of the corpus, and the document each must find.
pub const QUERIES: &[(&str, &str)] = &[
    ("a person rides a horse", "horse"),
    ("someone is making an italian meal", "pasta"),
    ("a storm over the town at night", "rain"),
    ("a child performing music outdoors", "guitar"),
    ("software developers repaired a defect", "code"),
    ("a soccer victory", "football"),
    ("vegetables growing in a backyard", "garden"),
    ("travelling by rail overnight", "train"),
];
