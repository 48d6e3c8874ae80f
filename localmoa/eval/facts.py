"""Multiple-choice facts written for this project: easy, unambiguous general knowledge.

Each is (question, the right answer, three wrong ones). The `mcq` task set shuffles
the four under the letters A-D with its seed.
"""

from __future__ import annotations

FACTS: tuple[tuple[str, str, tuple[str, str, str]], ...] = (
    ("Which planet is closest to the Sun?", "Mercury", ("Venus", "Mars", "Jupiter")),
    ("How many days are there in a week?", "7", ("5", "6", "10")),
    ("What is the largest ocean on Earth?", "Pacific Ocean",
     ("Atlantic Ocean", "Indian Ocean", "Arctic Ocean")),
    ("What gas do plants take in from the air to make food?", "carbon dioxide",
     ("oxygen", "helium", "nitrogen")),
    ("At sea level, at what temperature does water boil?", "100 degrees Celsius",
     ("50 degrees Celsius", "0 degrees Celsius", "200 degrees Celsius")),
    ("Which animal is known as the king of the jungle?", "lion", ("mouse", "cow", "rabbit")),
    ("How many legs does a spider have?", "8", ("6", "4", "10")),
    ("What is the capital of France?", "Paris", ("Berlin", "Madrid", "Rome")),
    ("Which organ pumps blood through the human body?", "heart",
     ("lungs", "liver", "stomach")),
    ("What colour do you get by mixing blue and yellow?", "green", ("purple", "orange", "red")),
    ("How many continents are there on Earth?", "7", ("5", "9", "12")),
    ("What is frozen water called?", "ice", ("steam", "sand", "glass")),
    ("Which is the largest planet in our solar system?", "Jupiter",
     ("Earth", "Mars", "Mercury")),
    ("How many hours are there in a day?", "24", ("12", "20", "30")),
    ("What do bees make?", "honey", ("milk", "silk", "wool")),
    ("Which shape has three sides?", "triangle", ("square", "circle", "hexagon")),
    ("What is the opposite of hot?", "cold", ("warm", "loud", "tall")),
    ("Which star is at the centre of our solar system?", "the Sun",
     ("the Moon", "Polaris", "Sirius")),
    ("How many minutes are there in an hour?", "60", ("30", "100", "24")),
    ("What is the capital of Japan?", "Tokyo", ("Beijing", "Seoul", "Bangkok")),
    ("Which sense do we use our ears for?", "hearing", ("sight", "taste", "smell")),
    ("How many months are there in a year?", "12", ("10", "11", "13")),
    ("Which metal is liquid at room temperature?", "mercury", ("iron", "gold", "copper")),
    ("What is the chemical symbol for water?", "H2O", ("CO2", "O2", "NaCl")),
    ("Which bird is a well-known symbol of peace?", "dove", ("crow", "eagle", "vulture")),
    ("What is the tallest animal in the world?", "giraffe", ("elephant", "horse", "camel")),
    ("Which instrument has black and white keys?", "piano", ("drum", "violin", "trumpet")),
    ("On which continent is Egypt?", "Africa", ("Europe", "South America", "Australia")),
    ("How many sides does a square have?", "4", ("3", "5", "6")),
    ("What do caterpillars turn into?", "butterflies", ("spiders", "frogs", "bees")),
    ("Which season comes after winter?", "spring", ("summer", "autumn", "monsoon")),
    ("What is the main language spoken in Brazil?", "Portuguese",
     ("Spanish", "French", "English")),
)
