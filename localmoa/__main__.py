"""python -m localmoa"""

from localmoa.cli import main

main()
