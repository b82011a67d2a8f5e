module p7u(input [`RU] a, output [`RU] x);
  wire [`RU] w;
endmodule
