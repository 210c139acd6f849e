from gan_dist.cli import main

main()
