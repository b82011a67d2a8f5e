module RefModule (
  input  [7:0] in,
  output [7:0] out
);
  // upper and lower halves exchange places
  assign out = {in[3:0], in[7:4]};
endmodule
